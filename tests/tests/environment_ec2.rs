//! The test environment's EC2 endpoint (moto) takes the calls Ferry's snapshotter makes: volumes
//! with types, IOPS, throughput and encryption, snapshots with tags, and volumes from snapshots.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};
use ferry_tests::{TestEnv, unique_name};

#[tokio::test]
async fn a_volume_can_be_snapshotted_and_restored_from_the_snapshot() {
    let ec2 = TestEnv::get().ec2_client();
    let marker = unique_name("env-ec2");

    let volume = ec2
        .create_volume()
        .availability_zone("us-east-1a")
        .size(10)
        .volume_type(VolumeType::Gp3)
        .iops(4000)
        .throughput(250)
        .encrypted(true)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(Tag::builder().key("ferry.dev/test").value(&marker).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let volume_id = volume.volume_id().unwrap().to_owned();
    assert_eq!(volume.volume_type(), Some(&VolumeType::Gp3));
    assert_eq!(volume.iops(), Some(4000));
    assert_eq!(volume.encrypted(), Some(true));

    let snapshot = ec2
        .create_snapshot()
        .volume_id(&volume_id)
        .description("ferry environment test")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(Tag::builder().key("ferry.dev/test").value(&marker).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let snapshot_id = snapshot.snapshot_id().unwrap().to_owned();
    assert_eq!(snapshot.volume_id(), Some(volume_id.as_str()));

    let found = ec2
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:ferry.dev/test")
                .values(&marker)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ids: Vec<_> = found
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id())
        .collect();
    assert_eq!(ids, [snapshot_id.as_str()]);

    let restored = ec2
        .create_volume()
        .availability_zone("us-east-1b")
        .snapshot_id(&snapshot_id)
        .volume_type(VolumeType::Gp3)
        .send()
        .await
        .unwrap();
    assert_eq!(restored.snapshot_id(), Some(snapshot_id.as_str()));
    assert_eq!(restored.availability_zone(), Some("us-east-1b"));

    ec2.delete_snapshot()
        .snapshot_id(&snapshot_id)
        .send()
        .await
        .unwrap();
    let after = ec2
        .describe_snapshots()
        .filters(
            Filter::builder()
                .name("tag:ferry.dev/test")
                .values(&marker)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(after.snapshots().is_empty());
    for id in [volume_id, restored.volume_id().unwrap().to_owned()] {
        ec2.delete_volume().volume_id(id).send().await.unwrap();
    }
}
