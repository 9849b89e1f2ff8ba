//! How the data mover reaches an S3 store beyond its endpoint (issue 15): a private store behind
//! TLS is trusted through its CA bundle and nothing else, and a store asked for encryption at rest
//! gets the request with every object written. Against the test environment's MinIO (with its
//! built-in KMS) and a TLS front for it.

mod common;

use std::sync::Arc;

use common::*;
use ferry_mover::s3::ServerSideEncryption;
use ferry_mover::{Backend, BackupOptions, Repository, RestoreOptions, S3Backend, S3Options};
use ferry_tests::{BucketPrefix, TestEnv, TlsFront};

fn options(endpoint: String) -> S3Options {
    let env = TestEnv::get();
    S3Options {
        endpoint: Some(endpoint),
        region: env.s3_region().to_owned(),
        path_style: true,
        credentials: Some(env.s3_credentials()),
        // Small, so that packs go up in parts too.
        multipart_threshold: 5 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        // A refused certificate is final; no need to wait through retries.
        max_attempts: 1,
        ..S3Options::default()
    }
}

fn backend(prefix: &BucketPrefix, options: &S3Options) -> Arc<dyn Backend> {
    Arc::new(
        S3Backend::new(
            prefix.bucket(),
            prefix.prefix().trim_end_matches('/'),
            options,
        )
        .unwrap(),
    )
}

/// Backs up a directory with a file larger than the multipart threshold, restores it, and
/// compares.
fn round_trip(repo: &Arc<Repository>) {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    write(&source.join("big.bin"), &noise(21, 7 * 1024 * 1024));
    write(&source.join("small.txt"), b"hello");
    ferry_mover::backup(repo, &source, &BackupOptions::default()).unwrap();
    let target = work.path().join("target");
    ferry_mover::restore(repo, "latest", &target, &RestoreOptions::default()).unwrap();
    assert_same_tree(&source, &target);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_store_is_trusted_through_its_ca_bundle_and_nothing_else() {
    let front = TlsFront::start().await;
    let store = BucketPrefix::new(TestEnv::get(), "mover-ca-bundle");
    let trusted = S3Options {
        ca_bundle: Some(front.ca_pem().to_owned()),
        ..options(front.endpoint())
    };
    let other_ca = TlsFront::start().await;
    let untrusted = [
        ("the system's roots", options(front.endpoint())),
        (
            "another CA",
            S3Options {
                ca_bundle: Some(other_ca.ca_pem().to_owned()),
                ..options(front.endpoint())
            },
        ),
    ];
    tokio::task::spawn_blocking(move || {
        for (what, options) in untrusted {
            let refused = Repository::init(backend(&store, &options), PASSWORD, &test_options())
                .map(|_| ())
                .unwrap_err();
            assert!(
                format!("{refused:?}").contains("certificate")
                    || format!("{refused:?}").contains("UnknownIssuer"),
                "with {what}: {refused:?}"
            );
        }
        let repo = Arc::new(
            Repository::init(backend(&store, &trusted), PASSWORD, &test_options()).unwrap(),
        );
        round_trip(&repo);
        // Not a CA bundle: refused when the backend is made, with what is wrong.
        let garbage = S3Backend::new(
            store.bucket(),
            "x",
            &S3Options {
                ca_bundle: Some("not a certificate".to_owned()),
                ..options(front.endpoint())
            },
        )
        .unwrap_err();
        assert!(garbage.to_string().contains("CA bundle"), "{garbage}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_object_is_written_with_the_encryption_at_rest_asked_for() {
    let env = TestEnv::get();
    let store = BucketPrefix::new(env, "mover-sse");
    let plain = BucketPrefix::new(env, "mover-no-sse");
    let encrypted = S3Options {
        server_side_encryption: Some(ServerSideEncryption::S3Managed),
        ..options(env.s3_endpoint().to_owned())
    };
    let unencrypted = options(env.s3_endpoint().to_owned());
    let prefixes = [
        (store.bucket().to_owned(), store.prefix().to_owned()),
        (plain.bucket().to_owned(), plain.prefix().to_owned()),
    ];
    tokio::task::spawn_blocking(move || {
        for ((bucket, prefix), options) in prefixes.iter().zip([encrypted, unencrypted]) {
            let backend: Arc<dyn Backend> =
                Arc::new(S3Backend::new(bucket, prefix.trim_end_matches('/'), &options).unwrap());
            let repo = Arc::new(Repository::init(backend, PASSWORD, &test_options()).unwrap());
            round_trip(&repo);
        }
    })
    .await
    .unwrap();

    for (prefix, expected) in [(&store, Some("AES256")), (&plain, None)] {
        let objects = prefix.encryption("").await;
        // config, a key slot, packs (one sent in parts), an index, a snapshot.
        assert!(objects.len() >= 5, "{objects:?}");
        for (key, sse) in objects {
            assert_eq!(sse.as_deref(), expected, "{key}");
        }
    }
}
