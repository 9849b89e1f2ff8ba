//! Ferry's CRDs (deploy/crds.yaml is generated from the same types) are accepted by a real API
//! server, and Ferry's resources round-trip through it.

use ferry_protocol::crd::{Backup, BackupSpec, Phase};
use ferry_tests::{TestEnv, TestNamespace};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn ferry_crds_apply_and_their_resources_round_trip() {
    let client = TestEnv::get().kube_client().await;
    ferry_tests::install_ferry_crds(&client).await;

    let namespace = TestNamespace::create(&client, "crds").await;
    let backups = Api::<Backup>::namespaced(client.clone(), namespace.name());
    let spec: BackupSpec = serde_json::from_value(json!({
        "includedNamespaces": ["shop"],
        "labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]},
        "ttl": "72h",
    }))
    .unwrap();
    backups
        .create(
            &PostParams::default(),
            &Backup::new("nightly", spec.clone()),
        )
        .await
        .unwrap();
    let status = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup", "status": {"phase": "InProgress", "errors": 0, "warnings": 1}});
    backups
        .patch_status(
            "nightly",
            &PatchParams::apply("ferry-tests").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let read = backups.get("nightly").await.unwrap();
    assert_eq!(read.spec, spec);
    let read_status = read.status.unwrap();
    assert_eq!(read_status.phase, Some(Phase::InProgress));
    assert_eq!(read_status.warnings, 1);

    // The schema is enforced: a phase that is not one of the enum's values is refused.
    let bad = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup", "status": {"phase": "Exploded"}});
    let refused = backups
        .patch_status(
            "nightly",
            &PatchParams::apply("ferry-tests").force(),
            &Patch::Apply(&bad),
        )
        .await;
    assert!(refused.is_err(), "an invalid phase was accepted");
}
