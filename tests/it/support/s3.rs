//! An S3 client for the tests, to look at what the exporter wrote and to set
//! up buckets: the `minio` crate driven from synchronous code.
//!
//! Every call runs in a current-thread tokio runtime owned by the client and
//! is bounded by a timeout ([`CALL_TIMEOUT`] unless set). Errors are one
//! message holding the whole cause chain, since the crate's own message is
//! often only "Validation error occurred". S3 error codes the crate does not
//! know come out lowercase (`signaturedoesnotmatch`): compare codes without
//! case.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use futures_util::StreamExt;
use minio::s3::builders::ObjectContent;
use minio::s3::creds::StaticProvider;
use minio::s3::http::BaseUrl;
use minio::s3::multimap_ext::{Multimap, MultimapExt};
use minio::s3::types::{S3Api, ToStream};
use minio::s3::{MinioClient, MinioClientBuilder};

/// Default upper bound of one S3 call, pages of a listing included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A synchronous S3 client bound to one endpoint and one identity.
pub struct S3 {
    client: MinioClient,
    runtime: tokio::runtime::Runtime,
    url: String,
    timeout: Duration,
    page_size: Option<u16>,
}

impl S3 {
    /// A client for `url` (`http://host:port`) signing with the given keys.
    pub fn new(url: &str, access_key: &str, secret_key: &str) -> S3 {
        let base_url: BaseUrl = url
            .parse()
            .unwrap_or_else(|e| panic!("bad S3 url `{url}`: {e}"));
        let client = MinioClientBuilder::new(base_url)
            .provider(Some(StaticProvider::new(access_key, secret_key, None)))
            .skip_region_lookup(true)
            .build()
            .unwrap_or_else(|e| panic!("cannot build an S3 client for `{url}`: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread tokio runtime");
        S3 {
            client,
            runtime,
            url: url.to_string(),
            timeout: CALL_TIMEOUT,
            page_size: None,
        }
    }

    /// The same client listing `keys` keys a page instead of the server's
    /// default (1000), to exercise paging with few objects.
    pub fn with_page_size(mut self, keys: u16) -> S3 {
        self.page_size = Some(keys);
        self
    }

    /// The same client with another bound on each call.
    pub fn with_call_timeout(mut self, timeout: Duration) -> S3 {
        self.timeout = timeout;
        self
    }

    /// Runs one S3 call to completion, bounded by the call timeout.
    fn call<T, F>(&self, what: String, call: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        self.runtime
            .block_on(async { tokio::time::timeout(self.timeout, call).await })
            .map_err(|_| anyhow!("timed out after {:?}", self.timeout))
            .and_then(|result| result)
            .map_err(|e| anyhow!("{what} at {}: {}", self.url, condensed_chain(&e)))
    }

    /// Whether `bucket` exists (an error when the credentials are refused).
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool> {
        self.call(format!("bucket_exists `{bucket}`"), async {
            let response = self.client.bucket_exists(bucket)?.build().send().await?;
            Ok(response.exists())
        })
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        self.call(format!("create_bucket `{bucket}`"), async {
            self.client.create_bucket(bucket)?.build().send().await?;
            Ok(())
        })
    }

    /// Writes `data` at `bucket`/`key` with user metadata (names without the
    /// `x-amz-meta-` prefix).
    pub fn put_object(
        &self,
        bucket: &str,
        key: &str,
        data: Vec<u8>,
        metadata: &[(&str, &str)],
    ) -> Result<()> {
        self.call(format!("put_object `{bucket}/{key}`"), async {
            let mut user_metadata = Multimap::new();
            for (name, value) in metadata {
                user_metadata.add(format!("x-amz-meta-{name}"), *value);
            }
            self.client
                .put_object_content(bucket, key, ObjectContent::from(data))?
                .user_metadata(Some(user_metadata))
                .build()
                .send()
                .await?;
            Ok(())
        })
    }

    /// Every key under `prefix` in `bucket`, recursively, all pages, in key
    /// (byte) order.
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        self.call(format!("list_objects `{bucket}/{prefix}*`"), async {
            let mut pages = self
                .client
                .list_objects(bucket)?
                .prefix(Some(prefix.to_string()))
                .max_keys(self.page_size)
                .recursive(true)
                .build()
                .to_stream()
                .await;
            let mut keys = Vec::new();
            while let Some(page) = pages.next().await {
                keys.extend(
                    page?
                        .contents
                        .into_iter()
                        .filter(|entry| !entry.is_prefix)
                        .map(|entry| entry.name),
                );
            }
            keys.sort();
            Ok(keys)
        })
    }

    /// The whole content of `bucket`/`key`.
    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Vec<u8>> {
        self.call(format!("get_object `{bucket}/{key}`"), async {
            let response = self.client.get_object(bucket, key)?.build().send().await?;
            Ok(response.into_bytes().await?.to_vec())
        })
    }

    /// The user metadata of `bucket`/`key`: names without the `x-amz-meta-`
    /// prefix, lowercase as HTTP headers arrive.
    pub fn stat_metadata(&self, bucket: &str, key: &str) -> Result<HashMap<String, String>> {
        self.call(format!("stat_object `{bucket}/{key}`"), async {
            let response = self.client.stat_object(bucket, key)?.build().send().await?;
            Ok(response.user_metadata()?)
        })
    }

    /// Deletes `bucket`/`key` (deleting a missing key succeeds, as in S3).
    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        self.call(format!("delete_object `{bucket}/{key}`"), async {
            self.client
                .delete_object(bucket, key)?
                .build()
                .send()
                .await?;
            Ok(())
        })
    }
}

/// The messages of `error` and its causes joined by `: `, leaving out a cause
/// whose text the message before it already ends with (the crate repeats
/// its causes in its own messages).
fn condensed_chain(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}
