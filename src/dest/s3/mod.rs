//! The S3 destination: batch files as objects in one bucket of MinIO or any
//! S3-compatible server, through the `minio` crate.
//!
//! Owns (this file, the adapter): the `minio` client and the private
//! current-thread tokio runtime it runs on, the per-call timeout, the
//! integrity headers of an upload and our object metadata, and turning each
//! classified failure into [`DestError::Transient`] or [`DestError::Permanent`].
//! `endpoint.rs` turns the endpoint settings into a scheme, host and port;
//! `errors.rs` sorts every failure and words it (operation, bucket and key,
//! endpoint, S3 error code and, where one is obvious, the fix).
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
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use minio::s3::builders::{ObjectContent, Size, MAX_PART_SIZE, MIN_PART_SIZE};
use minio::s3::client::{MinioClient, MinioClientBuilder};
use minio::s3::creds::StaticProvider;
use minio::s3::error::Error as MinioError;
use minio::s3::http::BaseUrl;
use minio::s3::multimap_ext::{Multimap, MultimapExt};
use minio::s3::types::{BucketName, Region, S3Api, ToStream};
#[cfg(test)]
use sha2::{Digest, Sha256};

use super::{CondPut, DestError, Destination, ObjectMeta, Precondition};
use crate::config::S3Settings;
use crate::secret::Secret;

mod endpoint;
mod errors;

use endpoint::Endpoint;
use errors::*;

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
pub(crate) struct S3Destination {
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
    pub(crate) fn new(settings: S3Settings) -> Result<Self, DestError> {
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

    /// `If-None-Match: *` / `If-Match: "<etag>"`; a 412 is
    /// `PreconditionFailed`. A store that ignores the headers answers as
    /// for a plain PUT: the lease detects that once, with a probe.
    fn put_if(
        &mut self,
        key: &str,
        body: &[u8],
        cond: &Precondition,
    ) -> Result<CondPut, DestError> {
        use minio::s3::response_traits::HasEtagFromHeaders;
        let mut headers = Multimap::new();
        match cond {
            Precondition::Absent => headers.add("If-None-Match", "*"),
            Precondition::Matches(tag) => headers.add("If-Match", format!("\"{tag}\"")),
        }
        let result = self.run(async {
            self.client
                .put_object_content(self.bucket.clone(), key, ObjectContent::from(body.to_vec()))?
                .extra_headers(headers)
                .content_type(CONTENT_TYPE.to_string())
                .build()
                .send()
                .await
        });
        match result {
            Ok(resp) => Ok(CondPut::Stored(
                resp.etag().map(|t| t.to_string()).unwrap_or_default(),
            )),
            Err(f) if f.code == "PreconditionFailed" || f.code == "HTTP 412" => {
                Ok(CondPut::PreconditionFailed)
            }
            Err(f) => Err(self.error("cannot upload", &self.target(key), f)),
        }
    }

    fn get_tagged(&mut self, key: &str) -> Result<Option<(Vec<u8>, String)>, DestError> {
        use minio::s3::response_traits::HasEtagFromHeaders;
        let result = self.run(async {
            let resp = self
                .client
                .get_object(self.bucket.clone(), key)?
                .build()
                .send()
                .await?;
            let tag = resp.etag().map(|t| t.to_string()).unwrap_or_default();
            let body = resp.content_verified().await?;
            Ok((body.to_vec(), tag))
        });
        match result {
            Ok(v) => Ok(Some(v)),
            Err(f) if f.code == "NoSuchKey" => Ok(None),
            Err(f) => Err(self.error("cannot download", &self.target(key), f)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn settings() -> S3Settings {
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
}
