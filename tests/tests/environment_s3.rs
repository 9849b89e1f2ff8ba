//! The test environment's MinIO takes the S3 calls Ferry makes: put, list (paginated), get,
//! ranged get, multipart upload and delete, with path-style addressing.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use ferry_tests::{BucketPrefix, TestEnv};

#[tokio::test]
async fn objects_can_be_put_listed_and_read_back() {
    let env = TestEnv::get();
    let s3 = env.s3_client();
    let prefix = BucketPrefix::new(env, "env-s3");

    for i in 0..25 {
        s3.put_object()
            .bucket(prefix.bucket())
            .key(prefix.key(&format!("objects/{i:03}")))
            .body(ByteStream::from(format!("object number {i}").into_bytes()))
            .send()
            .await
            .unwrap();
    }

    // Pages of 10 force the paginator to follow continuation tokens.
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(prefix.bucket())
        .prefix(prefix.key("objects/"))
        .max_keys(10)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        keys.extend(
            page.unwrap()
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    let expected: Vec<_> = (0..25)
        .map(|i| prefix.key(&format!("objects/{i:03}")))
        .collect();
    assert_eq!(keys, expected);

    let object = s3
        .get_object()
        .bucket(prefix.bucket())
        .key(prefix.key("objects/007"))
        .send()
        .await
        .unwrap();
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], b"object number 7");

    let ranged = s3
        .get_object()
        .bucket(prefix.bucket())
        .key(prefix.key("objects/012"))
        .range("bytes=7-12")
        .send()
        .await
        .unwrap();
    assert_eq!(
        &ranged.body.collect().await.unwrap().into_bytes()[..],
        b"number"
    );

    s3.delete_object()
        .bucket(prefix.bucket())
        .key(prefix.key("objects/007"))
        .send()
        .await
        .unwrap();
    let missing = s3
        .get_object()
        .bucket(prefix.bucket())
        .key(prefix.key("objects/007"))
        .send()
        .await;
    assert!(missing.unwrap_err().into_service_error().is_no_such_key());
}

#[tokio::test]
async fn a_multipart_upload_assembles_its_parts() {
    let env = TestEnv::get();
    let s3 = env.s3_client();
    let prefix = BucketPrefix::new(env, "env-s3-multipart");
    let key = prefix.key("large");

    // S3 requires every part but the last to be at least 5 MiB.
    let part_size = 5 * 1024 * 1024;
    let parts: Vec<Vec<u8>> = vec![
        vec![b'a'; part_size],
        vec![b'b'; part_size],
        b"tail".to_vec(),
    ];
    let upload = s3
        .create_multipart_upload()
        .bucket(prefix.bucket())
        .key(&key)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut completed = Vec::new();
    for (number, part) in (1..).zip(&parts) {
        let uploaded = s3
            .upload_part()
            .bucket(prefix.bucket())
            .key(&key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap();
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag)
                .build(),
        );
    }
    s3.complete_multipart_upload()
        .bucket(prefix.bucket())
        .key(&key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .unwrap();

    let body = s3
        .get_object()
        .bucket(prefix.bucket())
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap();
    assert_eq!(body.into_bytes().to_vec(), parts.concat());
}
