//! The S3 destination: batch files as objects in one bucket of MinIO or any
//! S3-compatible server, through the `minio` crate.
//!
//! Owns: turning the endpoint settings into a base URL, the `minio` client and
//! the private current-thread tokio runtime it runs on, the per-call timeout,
//! the integrity headers of an upload, and the sorting of every failure into
//! [`DestError::Transient`] or [`DestError::Permanent`] with a message that
//! names the operation, the bucket and key, the endpoint, the S3 error code and,
//! where one is obvious, the fix.
//!
//! Does not own: retries and backoff (the caller retries `Transient`), object
//! naming, or what the metadata means.
//!
//! Everything else in the program is synchronous: each call blocks the calling
//! thread on this destination's own runtime. A destination is meant to be used
//! by one thread; make one per thread if several threads upload.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::Ipv6Addr;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use minio::s3::builders::{ObjectContent, Size, MAX_PART_SIZE, MIN_PART_SIZE};
use minio::s3::client::{MinioClient, MinioClientBuilder};
use minio::s3::creds::StaticProvider;
use minio::s3::error::{Error as MinioError, NetworkError, S3ServerError, ValidationErr};
use minio::s3::http::BaseUrl;
use minio::s3::minio_error_response::MinioErrorCode;
use minio::s3::multimap_ext::{Multimap, MultimapExt};
use minio::s3::types::{BucketName, Region, S3Api, ToStream};
#[cfg(test)]
use sha2::{Digest, Sha256};

use super::{DestError, Destination, ObjectMeta};
use crate::config::S3Settings;
use crate::secret::Secret;

/// Region used to sign requests when none is configured (MinIO and SeaweedFS
/// accept any region; AWS needs the bucket's).
const DEFAULT_REGION: &str = "us-east-1";
/// Content type of every uploaded batch file.
const CONTENT_TYPE: &str = "application/x-ndjson";
/// User metadata names (sent as `x-amz-meta-<name>`, read back without the prefix).
const META_EVENTS: &str = "events";
const META_FIRST_ID: &str = "first-id";
const META_LAST_ID: &str = "last-id";
const META_SHA256: &str = "sha256";
const META_NAMES: [&str; 4] = [META_EVENTS, META_FIRST_ID, META_LAST_ID, META_SHA256];

/// Hints, named after the configuration keys an operator can change.
const HINT_CREDENTIALS: &str = "check `minio.access_key` / `minio.secret_key`";
const HINT_PERMISSIONS: &str =
    "check `minio.access_key` / `minio.secret_key` and that this key may read, write, list and delete in the bucket";
const HINT_CERT: &str = "check `minio.cert_check` / `minio.ca_file`";
const HINT_TLS: &str =
    "check `minio.secure` and the endpoint scheme: the server may not speak TLS on this port";
const HINT_PLAIN_HTTP: &str =
    "check `minio.endpoint` and `minio.secure`: the answer did not come from an S3 server speaking this protocol";
const HINT_BAD_REQUEST: &str = "check `minio.endpoint`, `minio.secure` and `minio.region`";
const HINT_BUCKET: &str = "check `minio.bucket`";
const HINT_BUCKET_GONE: &str =
    "the bucket was removed after the exporter found or created it: check `minio.bucket` / `dead_letter.bucket`, then run again (a missing bucket is created before its first upload)";
const HINT_BUCKET_TAKEN: &str =
    "the name belongs to another account: choose another `minio.bucket`";
const HINT_REGION: &str = "check `minio.region`";
const HINT_CLOCK: &str = "check this machine's clock";
const HINT_UNREACHABLE: &str =
    "check that the server is running and that `minio.endpoint` / `minio.port` point to it";
const HINT_DNS: &str = "check `minio.endpoint`";

/// The next page of a listing stream (`Option<Result<page, error>>`), as a
/// future. A macro because the stream's trait cannot be named without
/// depending on the futures crates; `poll_fn` stands in for `StreamExt::next`.
macro_rules! next_page {
    ($pages:expr) => {
        std::future::poll_fn(|cx| Pin::new(&mut *$pages).poll_next(cx))
    };
}

/// Objects in one S3 bucket. Each call blocks on a private current-thread
/// tokio runtime and gives up after [`S3Settings::timeout`].
pub struct S3Destination {
    runtime: tokio::runtime::Runtime,
    client: MinioClient,
    bucket: BucketName,
    endpoint: Endpoint,
    region: String,
    timeout: Duration,
    /// Kept only to mask it in messages that come from libraries.
    secret_key: Secret,
    /// `prepare` succeeded: the bucket exists. A destination nobody prepared
    /// (the dead letters) prepares itself before its first upload.
    prepared: bool,
}

impl fmt::Debug for S3Destination {
    // Hand-written: the client holds the credentials and must never be printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Destination")
            .field("bucket", &self.bucket.as_str())
            .field("endpoint", &self.endpoint.to_string())
            .field("region", &self.region)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl S3Destination {
    /// Checks the settings and builds the client; does not contact the server
    /// (that is [`Destination::prepare`]). Errors are `Permanent`.
    pub fn new(settings: S3Settings) -> Result<Self, DestError> {
        let scrub = |text: String| DestError::Permanent(settings.secret_key.scrub(&text));

        let endpoint = Endpoint::parse(&settings.endpoint, settings.port, settings.secure)
            .map_err(|why| scrub(format!("{why}; check `minio.endpoint` / `minio.port`")))?;
        let bucket = BucketName::new(settings.bucket.as_str()).map_err(|e| {
            scrub(format!(
                "invalid bucket name `{}`: {e}; {HINT_BUCKET}",
                settings.bucket
            ))
        })?;
        let region = match settings.region.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_REGION.to_string(),
            Some(r) => r.to_string(),
        };

        let mut base_url: BaseUrl = endpoint.base_url().parse().map_err(|e| {
            scrub(format!(
                "invalid S3 endpoint `{endpoint}`: {e}; check `minio.endpoint`"
            ))
        })?;
        // The region is pinned on the base URL so that the client never asks
        // the server for it. `skip_region_lookup(true)` alone would do that
        // too, but it also forces `us-east-1` whatever the configured region,
        // so it is only used when that is the region anyway.
        base_url.region = Region::new(region.as_str())
            .map_err(|e| scrub(format!("invalid region `{region}`: {e}; {HINT_REGION}")))?;

        let mut builder = MinioClientBuilder::new(base_url)
            .provider(Some(StaticProvider::new(
                &settings.access_key,
                settings.secret_key.expose(),
                None,
            )))
            .skip_region_lookup(region == DEFAULT_REGION)
            .app_info(Some((
                env!("CARGO_PKG_NAME").to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )));
        if let Some(ca_file) = &settings.ca_file {
            builder = builder.ssl_cert_file(Some(ca_file.as_path()));
        }
        if !settings.cert_check {
            if endpoint.https {
                log::warn!(
                    "TLS certificate check is off for {endpoint}: any server can pose as it"
                );
            }
            builder = builder.ignore_cert_check(Some(true));
        }
        let client = builder.build().map_err(|e| {
            let why = cause_text(&e);
            match &settings.ca_file {
                Some(ca) => scrub(format!(
                    "cannot set up the S3 client for `{endpoint}` with CA file `{}`: {why}; {HINT_CERT}",
                    ca.display()
                )),
                None => scrub(format!("cannot set up the S3 client for `{endpoint}`: {why}")),
            }
        })?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| scrub(format!("cannot start the runtime of the S3 client: {e}")))?;

        Ok(S3Destination {
            runtime,
            client,
            bucket,
            endpoint,
            region,
            timeout: settings.timeout,
            secret_key: settings.secret_key,
            prepared: false,
        })
    }

    /// Runs one S3 call to completion on the private runtime, within the timeout.
    fn run<T, F>(&self, call: F) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, MinioError>>,
    {
        let limit = self.timeout;
        self.runtime.block_on(async move {
            // The timer must be created inside the runtime, hence inside block_on.
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(err)) => Err(Failure::from_minio(&err)),
                Err(_) => Err(Failure::timeout(limit)),
            }
        })
    }

    /// Turns a failure into the error the caller sees, secret masked.
    fn error(&self, op: &str, target: &str, failure: Failure) -> DestError {
        let text = failure.message(op, target, &self.endpoint.to_string());
        let text = self.secret_key.scrub(&text);
        match failure.class {
            Class::Transient => DestError::Transient(text),
            Class::Permanent => DestError::Permanent(text),
        }
    }

    fn target(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.as_str())
    }

    /// A HEAD answer has no body, so a refused HEAD (`bucket_exists`,
    /// `stat_object`) reads as a bare 403 `AccessDenied` even when the server
    /// said `SignatureDoesNotMatch`. A one-key listing (a GET) brings back the
    /// server's own code and message; anything else keeps the original failure.
    fn explain_denied_head(&self, failure: Failure, prefix: &str) -> Failure {
        if failure.code != "AccessDenied" {
            return failure;
        }
        let probe = self.run(async {
            let mut pages = self
                .client
                .list_objects(self.bucket.clone())?
                .prefix(Some(prefix.to_string()))
                .max_keys(Some(1))
                .build()
                .to_stream()
                .await;
            next_page!(pages).await.transpose().map(|_| ())
        });
        match probe {
            Err(explained) if is_credential_code(&explained.code) => explained,
            _ => failure,
        }
    }

    /// Whether `bucket_exists` says yes; any failure counts as no.
    fn bucket_visible(&self) -> bool {
        self.run(async {
            self.client
                .bucket_exists(self.bucket.clone())?
                .build()
                .send()
                .await
        })
        .is_ok_and(|resp| resp.exists())
    }

    /// `stat_object`: `None` when the key does not exist.
    fn stat(
        &self,
        op: &str,
        key: &str,
    ) -> Result<Option<minio::s3::response::StatObjectResponse>, DestError> {
        let result = self.run(async {
            self.client
                .stat_object(self.bucket.clone(), key)?
                .build()
                .send()
                .await
        });
        match result {
            Ok(resp) => Ok(Some(resp)),
            Err(f) if f.code == "NoSuchKey" => Ok(None),
            Err(f) => {
                let f = self.explain_denied_head(f, key);
                Err(self.error(op, &self.target(key), f))
            }
        }
    }
}

impl Destination for S3Destination {
    fn describe(&self) -> String {
        format!("s3://{} at {}", self.bucket.as_str(), self.endpoint)
    }

    fn prepare(&mut self) -> Result<(), DestError> {
        let target = format!("s3://{}", self.bucket.as_str());
        let exists = self
            .run(async {
                self.client
                    .bucket_exists(self.bucket.clone())?
                    .build()
                    .send()
                    .await
            })
            .map(|resp| resp.exists())
            .map_err(|f| {
                let f = self.explain_denied_head(f, "");
                self.error("cannot check bucket", &target, f)
            })?;
        if exists {
            self.prepared = true;
            return Ok(());
        }
        let created = self.run(async {
            self.client
                .create_bucket(self.bucket.clone())?
                .build()
                .send()
                .await
        });
        match created {
            Ok(_) => {
                log::info!("created bucket {target} at {}", self.endpoint);
            }
            // Another exporter (or a person) created it between the two calls.
            Err(f) if f.code == "BucketAlreadyOwnedByYou" => {}
            // Some servers say this for a bucket of ours too: ours if we can see it.
            Err(f) if f.code == "BucketAlreadyExists" && self.bucket_visible() => {}
            Err(f) => return Err(self.error("cannot create bucket", &target, f)),
        }
        self.prepared = true;
        Ok(())
    }

    fn put(&mut self, key: &str, body: &[u8], meta: &ObjectMeta) -> Result<(), DestError> {
        if !self.prepared {
            self.prepare()?;
        }
        let target = self.target(key);
        let refuse = |why: String| {
            DestError::Permanent(
                self.secret_key
                    .scrub(&format!("refusing to upload `{target}`: {why}")),
            )
        };

        // The committer hashed this very buffer a moment ago: the digest is
        // taken from the metadata rather than computed a second time. Should
        // it not match the body, the server refuses the object (`BadDigest`).
        let sha256_hex = meta.sha256_hex.to_ascii_lowercase();
        let digest: Vec<u8> = match (0..sha256_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(sha256_hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
        {
            Ok(d) if d.len() == 32 => d,
            _ => {
                return Err(refuse(format!(
                    "`{}` is not a SHA-256 in hex (a bug in the exporter)",
                    meta.sha256_hex
                )))
            }
        };
        let len = body.len() as u64;
        if len > MAX_PART_SIZE {
            return Err(refuse(format!(
                "{len} bytes is more than one S3 PUT can take ({MAX_PART_SIZE} bytes); lower the batch size limit"
            )));
        }

        let mut user_metadata = Multimap::new();
        user_metadata.add(format!("x-amz-meta-{META_EVENTS}"), meta.events.to_string());
        user_metadata.add(
            format!("x-amz-meta-{META_FIRST_ID}"),
            encode_meta(&meta.first_id),
        );
        user_metadata.add(
            format!("x-amz-meta-{META_LAST_ID}"),
            encode_meta(&meta.last_id),
        );
        user_metadata.add(format!("x-amz-meta-{META_SHA256}"), sha256_hex);

        // The server checks the body it received against both digests and
        // refuses the object (`BadDigest`, `XAmzContentChecksumMismatch`)
        // when one differs; SeaweedFS checks both, and AWS keeps the SHA-256
        // to return it on GET. The SigV4 payload hash is no substitute:
        // SeaweedFS accepts a body that does not match it.
        // `checksum_algorithm(SHA256)` was rejected: the crate would hash the
        // body a second time for the same header.
        let mut integrity = Multimap::new();
        integrity.add("Content-MD5", minio::s3::utils::md5sum_hash(body));
        integrity.add(
            "x-amz-checksum-sha256",
            base64::engine::general_purpose::STANDARD.encode(digest),
        );

        // One part, always: a multipart upload would send the whole-body
        // digests with every part, and its ETag would not be the body's MD5.
        // The part size must be at least 5 MiB and, for an empty body, unset.
        let part_size = match len {
            0 => Size::Unknown,
            n => Size::Known(n.max(MIN_PART_SIZE)),
        };

        let result = self.run(async {
            self.client
                .put_object_content(self.bucket.clone(), key, ObjectContent::from(body.to_vec()))?
                .user_metadata(user_metadata)
                .extra_headers(integrity)
                .content_type(CONTENT_TYPE.to_string())
                .part_size(part_size)
                .build()
                .send()
                .await
        });
        result
            .map(|_| ())
            .map_err(|f| self.error("cannot upload", &target, f))
    }

    fn exists(&mut self, key: &str) -> Result<bool, DestError> {
        Ok(self.stat("cannot look up", key)?.is_some())
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<String>, DestError> {
        let target = format!("s3://{}/{prefix}*", self.bucket.as_str());
        let mut pages = self
            .run(async {
                Ok(self
                    .client
                    .list_objects(self.bucket.clone())?
                    .prefix(Some(prefix.to_string()))
                    .recursive(true)
                    .build()
                    .to_stream()
                    .await)
            })
            .map_err(|f| self.error("cannot list", &target, f))?;

        let mut keys = Vec::new();
        // One call per page of up to 1000 keys, each within the timeout.
        while let Some(page) = self
            .run(async { next_page!(pages).await.transpose() })
            .map_err(|f| self.error("cannot list", &target, f))?
        {
            if page.is_truncated && page.next_continuation_token.is_none() {
                // The crate would start over from the first page, forever.
                return Err(self.error(
                    "cannot list",
                    &target,
                    Failure::permanent(
                        "InvalidServerResponse",
                        "the server said the listing goes on but gave no continuation token",
                        None,
                    ),
                ));
            }
            keys.extend(
                page.contents
                    .into_iter()
                    .filter(|entry| !entry.is_prefix)
                    .map(|entry| entry.name),
            );
        }
        // S3 lists in byte order already; sorting here makes it a promise.
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    fn get(&mut self, key: &str) -> Result<Vec<u8>, DestError> {
        let result = self.run(async {
            let resp = self
                .client
                .get_object(self.bucket.clone(), key)?
                .build()
                .send()
                .await?;
            // Checks the body against the checksum the server stored, if any.
            resp.content_verified().await
        });
        result
            .map(|bytes| bytes.to_vec())
            .map_err(|f| self.error("cannot download", &self.target(key), f))
    }

    fn meta(&mut self, key: &str) -> Result<Option<ObjectMeta>, DestError> {
        let Some(resp) = self.stat("cannot read the metadata of", key)? else {
            return Ok(None);
        };
        let target = self.target(key);
        let fields = resp.user_metadata().map_err(|e| {
            self.error(
                "cannot read the metadata of",
                &target,
                Failure::permanent("InvalidServerResponse", &e.to_string(), None),
            )
        })?;
        meta_from_user_metadata(&fields).map_err(|why| {
            DestError::Permanent(self.secret_key.scrub(&format!(
                "object `{target}` at `{}` has unusable metadata: {why}; it was not written by this exporter, or was changed since",
                self.endpoint
            )))
        })
    }

    fn delete(&mut self, key: &str) -> Result<(), DestError> {
        let result = self.run(async {
            self.client
                .delete_object(self.bucket.clone(), key)?
                .build()
                .send()
                .await
        });
        match result {
            Ok(_) => Ok(()),
            Err(f) if f.code == "NoSuchKey" => Ok(()),
            Err(f) => Err(self.error("cannot delete", &self.target(key), f)),
        }
    }
}

// ---------------------------------------------------------------------------
// Pure parts: endpoint parsing, metadata, failure classification.

/// Scheme, host and port of the S3 server; displays as `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    https: bool,
    /// Host name or IP; an IPv6 address is kept in brackets.
    host: String,
    port: u16,
}

impl Endpoint {
    /// `endpoint` is `host`, `host:port` or either with `http://` / `https://`
    /// (which overrides `secure`); a trailing `/` is allowed, a path is not.
    /// `port` must agree with a port written in `endpoint`.
    fn parse(endpoint: &str, port: Option<u16>, secure: bool) -> Result<Endpoint, String> {
        let raw = endpoint.trim();
        let bad = |why: &str| format!("invalid S3 endpoint `{endpoint}`: {why}");
        if raw.is_empty() {
            return Err(bad("it is empty"));
        }
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(raw, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(raw, "http://") {
            (false, rest)
        } else if raw.contains("://") {
            return Err(bad("the scheme must be `http://` or `https://`"));
        } else {
            (secure, raw)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "give only the host and port (the bucket goes in `minio.bucket`)",
            ));
        }

        let (host, written_port) = if let Some(inner) = rest.strip_prefix('[') {
            let (addr, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("`[` without `]`"))?;
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between `[` and `]`"));
            }
            let written = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("unexpected text after `]`"))?,
                ),
            };
            (format!("[{addr}]"), written)
        } else if rest.parse::<Ipv6Addr>().is_ok() {
            (format!("[{rest}]"), None)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        if !host.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(bad(
                "the host may hold only letters, digits, `-`, `.` and `_`",
            ));
        }
        let written_port = match written_port {
            None => None,
            Some(text) => match text.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return Err(bad(&format!("`{text}` is not a port number"))),
            },
        };
        if port == Some(0) {
            return Err(bad("port 0"));
        }
        let port = match (written_port, port) {
            (Some(written), Some(given)) if written != given => {
                return Err(bad(&format!(
                    "it says port {written} but the port setting says {given}"
                )))
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) if https => 443,
            (None, None) => 80,
        };
        Ok(Endpoint { https, host, port })
    }

    /// The base URL given to the `minio` crate, port always written.
    fn base_url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `value` as an S3 metadata value: every byte outside printable ASCII
/// without blanks (servers refuse non-ASCII and trim blanks) and every `%`
/// becomes `%XX`. Stream ids (`<ms>-<seq>`) pass unchanged; a dead letter's
/// id may be anything the server sent.
fn encode_meta(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value [`encode_meta`] encoded; `None` when it is not such an encoding.
fn decode_meta(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Our metadata from the user metadata of an object (names without
/// `x-amz-meta-`, any case): `None` when none of our fields is there, an error
/// when only some are or one is malformed.
fn meta_from_user_metadata(fields: &HashMap<String, String>) -> Result<Option<ObjectMeta>, String> {
    let lower: HashMap<String, &str> = fields
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    let present: Vec<&str> = META_NAMES
        .into_iter()
        .filter(|name| lower.contains_key(*name))
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let field = |name: &str| {
        lower
            .get(name)
            .map(|v| v.trim())
            .ok_or_else(|| format!("`{name}` is missing (found {})", present.join(", ")))
    };
    let events = field(META_EVENTS)?;
    let events = events
        .parse::<u64>()
        .map_err(|_| format!("`{META_EVENTS}` is `{events}`, not a count"))?;
    let sha256_hex = field(META_SHA256)?.to_ascii_lowercase();
    if sha256_hex.len() != 64 || !sha256_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{META_SHA256}` is `{sha256_hex}`, not a SHA-256 in hex"
        ));
    }
    let id = |name: &str| {
        let raw = field(name)?;
        decode_meta(raw).ok_or_else(|| format!("`{name}` is `{raw}`, not a percent-encoded id"))
    };
    Ok(Some(ObjectMeta {
        events,
        first_id: id(META_FIRST_ID)?,
        last_id: id(META_LAST_ID)?,
        sha256_hex,
    }))
}

/// Whether the same call may succeed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Transient,
    Permanent,
}

/// One failed call, classified, before it is worded for an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    class: Class,
    /// The S3 error code (`SignatureDoesNotMatch`, `HTTP 503`), or a short
    /// name for a failure below HTTP (`connection refused`, `timeout`).
    code: String,
    /// What the server or the network stack said.
    detail: String,
    hint: Option<&'static str>,
}

impl Failure {
    fn permanent(code: &str, detail: &str, hint: Option<&'static str>) -> Failure {
        Failure {
            class: Class::Permanent,
            code: code.to_string(),
            detail: detail.to_string(),
            hint,
        }
    }

    fn timeout(limit: Duration) -> Failure {
        Failure {
            class: Class::Transient,
            code: "timeout".to_string(),
            detail: format!("no answer within {}", crate::text::duration(limit)),
            hint: None,
        }
    }

    /// ``<op> `<target>` at `<endpoint>`: <code>: <detail>; <hint>``
    fn message(&self, op: &str, target: &str, endpoint: &str) -> String {
        let detail = self.detail.trim().trim_end_matches('.');
        let mut text = format!("{op} `{target}` at `{endpoint}`: {}", self.code);
        if !detail.is_empty() && detail != self.code {
            text.push_str(": ");
            text.push_str(detail);
        }
        if let Some(hint) = self.hint {
            text.push_str("; ");
            text.push_str(hint);
        }
        text
    }

    /// Classifies an error of the `minio` crate.
    fn from_minio(err: &MinioError) -> Failure {
        match err {
            MinioError::S3Server(S3ServerError::S3Error(resp)) => {
                let code = match resp.code() {
                    // The crate lower-cases the codes it does not know.
                    MinioErrorCode::OtherError(text) => canonical_code(&text),
                    known => known.to_string(),
                };
                let detail = resp.message().clone().unwrap_or_default();
                let (class, hint) = classify_code(&code);
                Failure {
                    class,
                    code,
                    detail,
                    hint,
                }
            }
            MinioError::S3Server(S3ServerError::InvalidServerResponse {
                message,
                http_status_code,
                ..
            }) => Failure {
                class: classify_status(*http_status_code),
                code: format!("HTTP {http_status_code}"),
                detail: format!("unexpected answer: {message}"),
                hint: Some(HINT_PLAIN_HTTP),
            },
            MinioError::S3Server(S3ServerError::HttpError(status, body)) => Failure {
                class: classify_status(*status),
                code: format!("HTTP {status}"),
                detail: first_line(body),
                hint: None,
            },
            MinioError::Network(NetworkError::ServerError(status)) => Failure {
                class: classify_status(*status),
                code: format!("HTTP {status}"),
                detail: String::new(),
                hint: None,
            },
            MinioError::Network(NetworkError::ReqwestError(e))
            | MinioError::Validation(ValidationErr::HttpError(e)) => {
                let mut failure = from_cause_chain(err);
                // A request that could not even be built (a header value
                // refused, say) fails the same way every time.
                if failure.code == "network error" && e.is_builder() {
                    failure.class = Class::Permanent;
                    failure.code = "invalid request".to_string();
                }
                failure
            }
            MinioError::Validation(ValidationErr::ChecksumMismatch { .. })
            | MinioError::Validation(ValidationErr::CrcMismatch { .. }) => Failure {
                class: Class::Transient,
                code: "checksum mismatch".to_string(),
                detail: cause_text(err),
                hint: None,
            },
            MinioError::Validation(ValidationErr::IOError(_)) | MinioError::DriveIo(_) => {
                from_cause_chain(err)
            }
            MinioError::Validation(ValidationErr::InvalidBucketName { .. }) => {
                Failure::permanent("InvalidBucketName", &cause_text(err), Some(HINT_BUCKET))
            }
            // An answer that is not the XML an S3 server sends.
            MinioError::Validation(
                ValidationErr::XmlParseError(_)
                | ValidationErr::XmlError { .. }
                | ValidationErr::StrError { .. }
                | ValidationErr::IntError(_)
                | ValidationErr::Utf8Error(_)
                | ValidationErr::TimeParseError(_),
            ) => Failure::permanent(
                "InvalidServerResponse",
                &cause_text(err),
                Some(HINT_PLAIN_HTTP),
            ),
            MinioError::Validation(v) => {
                Failure::permanent("invalid request", &v.to_string(), None)
            }
        }
    }
}

/// S3 error codes as servers spell them, for the ones the `minio` crate
/// hands over in lower case; also every code [`classify_code`] knows.
const KNOWN_CODES: &[&str] = &[
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "BadDigest",
    "BadRequest",
    "BucketAlreadyExists",
    "BucketAlreadyOwnedByYou",
    "EntityTooLarge",
    "EntityTooSmall",
    "ExpiredToken",
    "IllegalLocationConstraintException",
    "IncompleteBody",
    "InternalError",
    "InvalidAccessKeyId",
    "InvalidArgument",
    "InvalidBucketName",
    "InvalidDigest",
    "InvalidObjectName",
    "InvalidRegion",
    "InvalidRequest",
    "InvalidToken",
    "KeyTooLongError",
    "MalformedXML",
    "MethodNotAllowed",
    "MissingContentLength",
    "MissingContentMD5",
    "NoSuchBucket",
    "NoSuchKey",
    "NotImplemented",
    "OperationAborted",
    "PermanentRedirect",
    "PreconditionFailed",
    "QuotaExceeded",
    "Redirect",
    "RequestLimitExceeded",
    "RequestTimeTooSkewed",
    "RequestTimeout",
    "ServiceUnavailable",
    "SignatureDoesNotMatch",
    "SlowDown",
    "SlowDownRead",
    "SlowDownWrite",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "TooManyRequestsException",
    "XAmzContentChecksumMismatch",
    "XAmzContentSHA256Mismatch",
    "XMinioErasureReadQuorum",
    "XMinioErasureWriteQuorum",
    "XMinioServerNotInitialized",
    "XMinioStorageFull",
];

/// `code` spelled as servers do when it is a known code, else unchanged.
fn canonical_code(code: &str) -> String {
    KNOWN_CODES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(code))
        .map_or_else(|| code.to_string(), |known| known.to_string())
}

/// Transient or permanent, and a hint, for an S3 error code.
fn classify_code(code: &str) -> (Class, Option<&'static str>) {
    if let Some(status) = strip_prefix_ignore_case(code, "HTTP ").and_then(|s| s.parse().ok()) {
        return (classify_status(status), None);
    }
    match canonical_code(code).as_str() {
        // Server busy or briefly broken: the same request may succeed later.
        "SlowDown"
        | "SlowDownRead"
        | "SlowDownWrite"
        | "InternalError"
        | "ServiceUnavailable"
        | "RequestTimeout"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequests"
        | "TooManyRequestsException"
        | "OperationAborted"
        | "XMinioServerNotInitialized"
        | "XMinioErasureReadQuorum"
        | "XMinioErasureWriteQuorum" => (Class::Transient, None),
        // The body arrived damaged: sending it again is the fix.
        "BadDigest"
        | "XAmzContentSHA256Mismatch"
        | "XAmzContentChecksumMismatch"
        | "IncompleteBody" => (Class::Transient, None),
        "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "InvalidToken" | "ExpiredToken" => {
            (Class::Permanent, Some(HINT_CREDENTIALS))
        }
        "AccessDenied" | "AllAccessDisabled" | "AccountProblem" => {
            (Class::Permanent, Some(HINT_PERMISSIONS))
        }
        "RequestTimeTooSkewed" => (Class::Permanent, Some(HINT_CLOCK)),
        // What the crate calls a bodiless 400, e.g. plain http to a TLS port.
        "BadRequest" => (Class::Permanent, Some(HINT_BAD_REQUEST)),
        "NoSuchBucket" => (Class::Permanent, Some(HINT_BUCKET_GONE)),
        "InvalidBucketName" => (Class::Permanent, Some(HINT_BUCKET)),
        "BucketAlreadyExists" => (Class::Permanent, Some(HINT_BUCKET_TAKEN)),
        "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException"
        | "InvalidRegion"
        | "PermanentRedirect"
        | "Redirect" => (Class::Permanent, Some(HINT_REGION)),
        // Anything else is a refusal of this request as it stands: retrying
        // the same bytes would loop, so stop and show the code.
        _ => (Class::Permanent, None),
    }
}

/// Transient for server-side trouble (5xx), throttling (429) and request
/// timeouts (408); permanent for every other refusal.
fn classify_status(status: u16) -> Class {
    match status {
        408 | 429 | 500..=599 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// Whether a code says the server did not accept who we are (used to replace
/// the bare `AccessDenied` of a HEAD by the code the server really gave).
fn is_credential_code(code: &str) -> bool {
    matches!(
        code,
        "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidToken"
            | "ExpiredToken"
            | "RequestTimeTooSkewed"
            | "AuthorizationHeaderMalformed"
            | "AccessDenied"
    )
}

/// Classifies a failure below HTTP by walking the chain of causes: the
/// crate's own text is only "Validation error occurred".
fn from_cause_chain(err: &(dyn std::error::Error + 'static)) -> Failure {
    let detail = cause_text(err);
    let mut found: Option<Failure> = None;
    for cause in causes(err) {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            let hint = match tls {
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    HINT_CERT
                }
                _ => HINT_TLS,
            };
            let code = if hint == HINT_CERT {
                "TLS certificate rejected"
            } else {
                "TLS error"
            };
            // Certificates are not fixed by waiting: this wins over the io
            // error that carries it.
            return Failure::permanent(code, &detail, Some(hint));
        }
        if found.is_some() {
            continue;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let (code, hint) = match io.kind() {
                K::ConnectionRefused => ("connection refused", Some(HINT_UNREACHABLE)),
                K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::NotConnected => ("connection lost", None),
                K::TimedOut => ("timeout", None),
                K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                    ("host unreachable", Some(HINT_UNREACHABLE))
                }
                _ => continue,
            };
            found = Some(Failure {
                class: Class::Transient,
                code: code.to_string(),
                detail: detail.clone(),
                hint,
            });
        } else if cause.to_string().starts_with("dns error") {
            // hyper's resolver error, known only by its text.
            found = Some(Failure {
                class: Class::Transient,
                code: "DNS lookup failed".to_string(),
                detail: detail.clone(),
                hint: Some(HINT_DNS),
            });
        }
    }
    if detail.contains("invalid peer certificate") {
        // A rustls error that reached us only as text.
        return Failure::permanent("TLS certificate rejected", &detail, Some(HINT_CERT));
    }
    found.unwrap_or(Failure {
        class: Class::Transient,
        code: "network error".to_string(),
        detail,
        hint: None,
    })
}

/// `err` and its causes, looking inside `io::Error`s (whose `source()` skips
/// the error they wrap).
fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        chain.push(cause);
        next = match cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
        if chain.len() > 32 {
            break;
        }
    }
    chain
}

/// The chain of causes as one line, without the generic wrappers of the
/// `minio` crate and without a wrapper that only repeats its cause.
fn cause_text(err: &(dyn std::error::Error + 'static)) -> String {
    const GENERIC: [&str; 3] = [
        "Validation error occurred",
        "Network error occurred",
        "Drive IO error occurred",
    ];
    let texts: Vec<String> = causes(err).iter().map(|e| e.to_string()).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let repeats_next = texts
            .get(i + 1)
            .is_some_and(|next| !next.is_empty() && text.contains(next.as_str()));
        // reqwest's "error sending request for url (...)" only repeats the
        // endpoint and key that the message names anyway.
        let request_wrapper = text.starts_with("error sending request") && i + 1 < texts.len();
        if GENERIC.contains(&text.as_str()) || repeats_next || request_wrapper || text.is_empty() {
            continue;
        }
        kept.push(text);
    }
    kept.dedup();
    kept.join(": ")
}

fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: "127.0.0.1".to_string(),
            port: Some(9000),
            secure: false,
            cert_check: true,
            ca_file: None,
            region: None,
            bucket: "exports".to_string(),
            access_key: "AK".to_string(),
            secret_key: Secret::new("super-secret-key"),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn endpoint_parsing_gives_the_base_url() {
        let cases: &[(&str, Option<u16>, bool, &str)] = &[
            (
                "minio.example.com",
                None,
                true,
                "https://minio.example.com:443",
            ),
            (
                "minio.example.com",
                None,
                false,
                "http://minio.example.com:80",
            ),
            (
                "minio.example.com",
                Some(9000),
                false,
                "http://minio.example.com:9000",
            ),
            (
                "minio.example.com:9000",
                None,
                true,
                "https://minio.example.com:9000",
            ),
            (
                "minio.example.com:9000",
                Some(9000),
                true,
                "https://minio.example.com:9000",
            ),
            ("http://minio:9000", None, true, "http://minio:9000"),
            ("HTTPS://minio", None, false, "https://minio:443"),
            ("https://minio/", Some(8443), false, "https://minio:8443"),
            (
                "  http://127.0.0.1:18333  ",
                None,
                true,
                "http://127.0.0.1:18333",
            ),
            ("::1", Some(9000), false, "http://[::1]:9000"),
            ("[::1]:9000", None, false, "http://[::1]:9000"),
            ("https://[fe80::1]", None, false, "https://[fe80::1]:443"),
            (
                "s3.eu-west-1.amazonaws.com",
                None,
                true,
                "https://s3.eu-west-1.amazonaws.com:443",
            ),
        ];
        for (endpoint, port, secure, want) in cases {
            let got = Endpoint::parse(endpoint, *port, *secure)
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(got.base_url(), *want, "{endpoint} {port:?} {secure}");
            got.base_url()
                .parse::<BaseUrl>()
                .unwrap_or_else(|e| panic!("minio refuses {want}: {e}"));
        }
    }

    #[test]
    fn endpoint_parsing_refuses_what_is_not_host_and_port() {
        let cases: &[(&str, Option<u16>, &str)] = &[
            ("", None, "empty"),
            ("   ", None, "empty"),
            ("ftp://minio", None, "scheme"),
            ("http://minio/bucket", None, "bucket"),
            ("http://user:pw@minio", None, "host and port"),
            ("minio:port", None, "not a port"),
            ("minio:70000", None, "not a port"),
            ("minio:0", None, "not a port"),
            ("minio", Some(0), "port 0"),
            ("minio:9000", Some(9001), "9000"),
            ("http://", None, "no host"),
            ("[::1", None, "without"),
            ("[zz]:9000", None, "IPv6"),
            ("[::1]x", None, "after"),
            ("min io", None, "letters"),
        ];
        for (endpoint, port, needle) in cases {
            let err = Endpoint::parse(endpoint, *port, false)
                .expect_err(&format!("{endpoint:?} should be refused"));
            assert!(err.contains(needle), "{endpoint:?}: {err}");
            assert!(err.contains(&format!("`{endpoint}`")), "{err}");
        }
    }

    #[test]
    fn s3_error_codes_are_classified() {
        use Class::*;
        let cases: &[(&str, Class, Option<&str>)] = &[
            ("SlowDown", Transient, None),
            ("InternalError", Transient, None),
            ("ServiceUnavailable", Transient, None),
            ("RequestTimeout", Transient, None),
            ("BadDigest", Transient, None),
            ("baddigest", Transient, None),
            ("BadRequest", Permanent, Some(HINT_BAD_REQUEST)),
            ("XAmzContentChecksumMismatch", Transient, None),
            ("HTTP 503", Transient, None),
            ("HTTP 429", Transient, None),
            ("HTTP 404", Permanent, None),
            ("SignatureDoesNotMatch", Permanent, Some(HINT_CREDENTIALS)),
            ("InvalidAccessKeyId", Permanent, Some(HINT_CREDENTIALS)),
            ("AccessDenied", Permanent, Some(HINT_PERMISSIONS)),
            ("NoSuchBucket", Permanent, Some(HINT_BUCKET_GONE)),
            ("InvalidBucketName", Permanent, Some(HINT_BUCKET)),
            ("BucketAlreadyExists", Permanent, Some(HINT_BUCKET_TAKEN)),
            ("AuthorizationHeaderMalformed", Permanent, Some(HINT_REGION)),
            ("RequestTimeTooSkewed", Permanent, Some(HINT_CLOCK)),
            ("EntityTooLarge", Permanent, None),
            ("SomethingNew", Permanent, None),
        ];
        for (code, class, hint) in cases {
            assert_eq!(classify_code(code), (*class, *hint), "{code}");
        }
    }

    #[test]
    fn http_statuses_are_classified() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify_status(status), Class::Transient, "{status}");
        }
        for status in [400, 401, 403, 404, 405, 409, 411, 413] {
            assert_eq!(classify_status(status), Class::Permanent, "{status}");
        }
    }

    fn s3_error(code: &str, message: &str) -> MinioError {
        let resp = minio::s3::minio_error_response::MinioErrorResponse::new(
            Default::default(),
            code.parse().unwrap(),
            Some(message.to_string()),
            "/exports/k".to_string(),
            String::new(),
            String::new(),
            None,
            None,
        );
        MinioError::S3Server(S3ServerError::S3Error(Box::new(resp)))
    }

    #[test]
    fn server_errors_keep_the_code_as_spelled() {
        let f = Failure::from_minio(&s3_error("SignatureDoesNotMatch", "The signature."));
        assert_eq!(f.class, Class::Permanent);
        assert_eq!(f.code, "SignatureDoesNotMatch");
        // What the crate makes of a code it does not know: lower case.
        let resp = minio::s3::minio_error_response::MinioErrorResponse::new(
            Default::default(),
            MinioErrorCode::OtherError("xamzcontentchecksummismatch".to_string()),
            None,
            String::new(),
            String::new(),
            String::new(),
            None,
            None,
        );
        let f = Failure::from_minio(&MinioError::S3Server(S3ServerError::S3Error(Box::new(
            resp,
        ))));
        assert_eq!(
            (f.class, f.code.as_str()),
            (Class::Transient, "XAmzContentChecksumMismatch")
        );
        let f = Failure::from_minio(&s3_error("NoSuchBucket", "gone"));
        assert_eq!(
            (f.class, f.code.as_str()),
            (Class::Permanent, "NoSuchBucket")
        );
        let f = Failure::from_minio(&s3_error("SlowDown", "Please reduce your request rate."));
        assert_eq!((f.class, f.code.as_str()), (Class::Transient, "SlowDown"));
        let f = Failure::from_minio(&MinioError::Network(NetworkError::ServerError(503)));
        assert_eq!((f.class, f.code.as_str()), (Class::Transient, "HTTP 503"));
        let f = Failure::from_minio(&MinioError::Network(NetworkError::ServerError(400)));
        assert_eq!(f.class, Class::Permanent);
    }

    #[test]
    fn io_causes_are_found_below_the_generic_wrapper() {
        let refused = MinioError::Validation(ValidationErr::IOError(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        assert_eq!(refused.to_string(), "Validation error occurred");
        let f = Failure::from_minio(&refused);
        assert_eq!(f.class, Class::Transient);
        assert_eq!(f.code, "connection refused");
        assert_eq!(f.detail, "Connection refused (os error 111)");
    }

    #[test]
    fn certificate_errors_are_permanent_even_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let err = MinioError::Validation(ValidationErr::IOError(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls,
        )));
        let f = Failure::from_minio(&err);
        assert_eq!(f.class, Class::Permanent);
        assert_eq!(f.hint, Some(HINT_CERT));
        assert!(
            f.detail.contains("invalid peer certificate"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn messages_name_operation_target_endpoint_code_and_fix() {
        let f = Failure::from_minio(&s3_error(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match.",
        ));
        let text = f.message("cannot upload", "s3://exports/a/b.json", "http://h:9000");
        assert_eq!(
            text,
            "cannot upload `s3://exports/a/b.json` at `http://h:9000`: SignatureDoesNotMatch: \
             The request signature we calculated does not match; \
             check `minio.access_key` / `minio.secret_key`"
        );
        let text = Failure::timeout(Duration::from_millis(1500)).message(
            "cannot list",
            "s3://b/p*",
            "http://h:1",
        );
        assert_eq!(
            text,
            "cannot list `s3://b/p*` at `http://h:1`: timeout: no answer within 1500 ms"
        );
    }

    #[test]
    fn errors_never_show_the_secret() {
        let mut s = settings();
        s.endpoint = "http://super-secret-key/x".to_string();
        let err = S3Destination::new(s).unwrap_err();
        assert!(!err.to_string().contains("super-secret-key"), "{err}");
        assert!(err.to_string().contains("***"), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn debug_and_describe_show_no_secret() {
        let dest = S3Destination::new(settings()).unwrap();
        let debug = format!("{dest:?}");
        assert!(!debug.contains("super-secret-key"), "{debug}");
        assert!(debug.contains("exports"), "{debug}");
        assert_eq!(dest.describe(), "s3://exports at http://127.0.0.1:9000");
        let settings_debug = format!("{:?}", settings());
        assert!(
            !settings_debug.contains("super-secret-key"),
            "{settings_debug}"
        );
    }

    #[test]
    fn bad_bucket_names_and_ca_files_are_permanent_config_errors() {
        let mut s = settings();
        s.bucket = "a".to_string();
        let err = S3Destination::new(s).unwrap_err();
        assert!(err.to_string().contains("`minio.bucket`"), "{err}");
        let mut s = settings();
        s.ca_file = Some(std::path::PathBuf::from("/nonexistent/ca.pem"));
        let err = S3Destination::new(s).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(err.to_string().contains("`minio.ca_file`"), "{err}");
    }

    #[test]
    fn metadata_round_trips_through_user_metadata() {
        let meta = ObjectMeta {
            events: 42,
            first_id: "1700000000000-0".to_string(),
            last_id: "1700000000999-3".to_string(),
            sha256_hex: crate::text::hex(&Sha256::digest(b"x")),
        };
        let fields: HashMap<String, String> = [
            ("events", "42"),
            ("First-Id", "1700000000000-0"),
            ("last-id", "1700000000999-3"),
            ("sha256", meta.sha256_hex.as_str()),
            ("other", "ignored"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(meta_from_user_metadata(&fields), Ok(Some(meta)));
    }

    #[test]
    fn foreign_or_partial_metadata_is_told_apart() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(meta_from_user_metadata(&map(&[])), Ok(None));
        assert_eq!(meta_from_user_metadata(&map(&[("author", "me")])), Ok(None));
        let err = meta_from_user_metadata(&map(&[("events", "3")])).unwrap_err();
        assert!(err.contains("`sha256` is missing"), "{err}");
        let sha = "0".repeat(64);
        let err = meta_from_user_metadata(&map(&[
            ("events", "three"),
            ("first-id", "a"),
            ("last-id", "b"),
            ("sha256", &sha),
        ]))
        .unwrap_err();
        assert!(err.contains("not a count"), "{err}");
        let err = meta_from_user_metadata(&map(&[
            ("events", "3"),
            ("first-id", "a"),
            ("last-id", "b"),
            ("sha256", "abc"),
        ]))
        .unwrap_err();
        assert!(err.contains("not a SHA-256"), "{err}");
    }

    #[test]
    fn metadata_values_are_encoded_to_printable_ascii_and_decoded_back() {
        for id in [
            "1700000000000-0",
            "",
            "5-0 ",
            " 5-0",
            "a\nb\r\tc",
            "été-✓",
            "100%",
            "%41",
        ] {
            let enc = encode_meta(id);
            assert!(
                enc.bytes().all(|b| (0x21..0x7f).contains(&b)),
                "{id:?} -> {enc:?}"
            );
            assert_eq!(decode_meta(&enc).as_deref(), Some(id), "{enc}");
        }
        assert_eq!(encode_meta("1700000000000-0"), "1700000000000-0");
        assert_eq!(encode_meta("5-0 "), "5-0%20");
        assert_eq!(decode_meta("%zz"), None);
        assert_eq!(decode_meta("%4"), None);
        let fields: HashMap<String, String> = [
            ("events", "1"),
            ("first-id", "%C3%A9t%C3%A9%20"),
            ("last-id", "%C3%A9t%C3%A9%20"),
            ("sha256", &"ab".repeat(32)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let meta = meta_from_user_metadata(&fields).unwrap().unwrap();
        assert_eq!(meta.first_id, "été ");
    }

    #[test]
    fn cause_text_drops_wrappers_that_repeat_their_cause() {
        let io = std::io::Error::other("tcp connect error");
        let err = MinioError::Validation(ValidationErr::IOError(io));
        assert_eq!(cause_text(&err), "tcp connect error");
    }
}
