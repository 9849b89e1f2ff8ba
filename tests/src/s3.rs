//! A prefix of the test bucket of a test's own, emptied when the test ends.

use std::time::Duration;

use crate::{TestEnv, unique_name};

/// A fresh prefix (`tests/<name>-<random>/`) in the test bucket. Dropping it deletes every object
/// under it.
#[derive(Debug)]
pub struct BucketPrefix {
    bucket: String,
    prefix: String,
}

impl BucketPrefix {
    pub fn new(env: &TestEnv, name: &str) -> BucketPrefix {
        BucketPrefix {
            bucket: env.s3_bucket().to_owned(),
            prefix: format!("tests/{}/", unique_name(name)),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `s3://bucket/prefix`, the form `ferry --repo` takes.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    /// The full key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Every object whose key starts with `under` (relative to this prefix): its key, relative
    /// too, and its size.
    pub async fn objects(&self, under: &str) -> Vec<(String, u64)> {
        let client = TestEnv::get().s3_client();
        let mut pages = client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.key(under))
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|error| panic!("listing {}: {error}", self.key(under)));
            for object in page.contents() {
                let key = object.key().unwrap_or_default();
                let relative = key.strip_prefix(&self.prefix).unwrap_or(key).to_owned();
                objects.push((relative, object.size().unwrap_or(0).max(0) as u64));
            }
        }
        objects
    }

    /// Every object under `under` (as [`BucketPrefix::objects`]) with the server-side encryption
    /// the store reports for it (`AES256`, `aws:kms`), if any.
    pub async fn encryption(&self, under: &str) -> Vec<(String, Option<String>)> {
        let client = TestEnv::get().s3_client();
        let mut encryption = Vec::new();
        for (key, _) in self.objects(under).await {
            let head = client
                .head_object()
                .bucket(&self.bucket)
                .key(self.key(&key))
                .send()
                .await
                .unwrap_or_else(|error| panic!("HEAD {}: {error}", self.key(&key)));
            let sse = head
                .server_side_encryption()
                .map(|sse| sse.as_str().to_owned());
            encryption.push((key, sse));
        }
        encryption
    }
}

impl Drop for BucketPrefix {
    fn drop(&mut self) {
        let (bucket, prefix) = (self.bucket.clone(), self.prefix.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            // The timer must be made inside the runtime: tokio::time needs a reactor to exist.
            runtime
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(30), empty_prefix(bucket, prefix))
                        .await
                })
                .ok()
        });
        let _ = cleanup.join();
    }
}

async fn empty_prefix(bucket: String, prefix: String) {
    let client = TestEnv::get().s3_client();
    let mut pages = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(&prefix)
        .into_paginator()
        .send();
    while let Some(Ok(page)) = pages.next().await {
        for object in page.contents() {
            if let Some(key) = object.key() {
                let _ = client.delete_object().bucket(&bucket).key(key).send().await;
            }
        }
    }
}
