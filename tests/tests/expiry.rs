//! Expiry, deletion and repository maintenance against the test API server, MinIO and a node
//! agent process, with the controller on a manual clock: a backup past its ttl is deleted
//! everywhere (its files in the bucket, its snapshots in the pod volume repository, the
//! resource), a younger one is kept, and the maintenance Job the controller starts gives the
//! space back; deleting a running backup waits for it to end. (tests/tests/snapshots.rs checks
//! that expiry removes a backup's EBS snapshots from moto.)

use std::time::Duration;

use ferry_controller::Clock;
use ferry_controller::maintenance::LOCATION_LABEL;
use ferry_protocol::crd::{Backup, Phase};
use ferry_tests::{
    CONVERGENCE_TIMEOUT, HasPhase, RunningAgent, RunningController, TestNamespace, agent_ca,
    create_object, in_repository, pseudo_random, run_job, summary,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// Bytes of the pod volume repositories in the controller's bucket prefix.
async fn repository_bytes(ferry: &RunningController) -> u64 {
    ferry
        .store
        .objects("repositories/")
        .await
        .iter()
        .map(|(_, size)| size)
        .sum()
}

/// Prompts a reconcile of `name` now, as any change would; the controller would otherwise look
/// again at its next requeue, in real time, whatever the manual clock says.
async fn nudge(api: &Api<Backup>, name: &str) {
    let patch = json!({"metadata": {"annotations": {"test.ferry.dev/nudge": jiff::Timestamp::now().to_string()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Waits for the controller to start a maintenance Job other than `seen`, and runs it as the
/// kubelet would; returns its name.
async fn run_next_maintenance_job(ferry: &RunningController, seen: &[String]) -> String {
    let jobs: Api<Job> = Api::namespaced(ferry.client.clone(), ferry.namespace.name());
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    let job = loop {
        let listed = jobs
            .list(&ListParams::default().labels(&format!("{LOCATION_LABEL}=default")))
            .await
            .unwrap();
        if let Some(job) = listed
            .items
            .into_iter()
            .find(|job| !seen.contains(&job.name_any()))
        {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller started no maintenance Job"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let output = run_job(&job).await;
    assert!(
        output.status.success(),
        "maintenance Job {} failed: {}\n{}",
        job.name_any(),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    // The Job is done; its TTL would remove it.
    jobs.delete(&job.name_any(), &DeleteParams::background())
        .await
        .unwrap();
    job.name_any()
}

#[tokio::test]
async fn an_expired_backup_is_deleted_everywhere_and_maintenance_gives_its_space_back() {
    let clock = Clock::manual(jiff::Timestamp::now());
    let ferry = RunningController::start_with_clock("expiry", true, clock.clone()).await;
    let client = ferry.client.clone();
    let ca = agent_ca(&ferry).await;
    let agent = RunningAgent::start(&client, ferry.namespace.name(), &ca).await;
    let app = TestNamespace::create(&client, "expiry-app").await;
    let ns = app.name();
    create_object(
        &client,
        ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
               "data": {"mode": "production"}}),
    )
    .await;
    let cache = agent.run_pod_with_volume(&client, ns, "web", "cache").await;

    // The short-lived backup holds data no other backup has; the long-lived one other data.
    std::fs::write(cache.join("old.bin"), pseudo_random(8 << 20, 1)).unwrap();
    let short = ferry
        .backup("short", json!({"includedNamespaces": [ns], "ttl": "1h"}))
        .await;
    assert_eq!(short.phase(), Some(Phase::Completed), "{}", summary(&short));
    std::fs::remove_file(cache.join("old.bin")).unwrap();
    std::fs::write(cache.join("new.bin"), pseudo_random(8 << 20, 2)).unwrap();
    let long = ferry
        .backup("long", json!({"includedNamespaces": [ns], "ttl": "720h"}))
        .await;
    assert_eq!(long.phase(), Some(Phase::Completed), "{}", summary(&long));
    assert!(
        !ferry.store.objects("backups/short/").await.is_empty(),
        "the backup wrote no files"
    );

    // The first maintenance finds nothing to reclaim yet.
    let first_job = run_next_maintenance_job(&ferry, &[]).await;
    let before = repository_bytes(&ferry).await;

    // Two hours later the short backup has expired; the long one has not.
    clock.advance(jiff::SignedDuration::from_hours(2));
    let backups = ferry.backups();
    nudge(&backups, "short").await;
    nudge(&backups, "long").await;
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    while backups.get_opt("short").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired backup was not deleted: {}",
            summary(&backups.get("short").await.unwrap())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        ferry.store.objects("backups/short/").await.is_empty(),
        "the expired backup's files are still in the bucket"
    );
    assert!(backups.get_opt("long").await.unwrap().is_some());
    assert!(!ferry.store.objects("backups/long/").await.is_empty());

    // Its snapshot is gone from the repository at once; its data at the next maintenance, which
    // is due an hour after the first.
    let password = ferry.repository_password().await;
    let repository = ferry.repository_url(ns);
    let tags = snapshot_tags(&repository, password.clone()).await;
    assert!(
        !tags.iter().any(|t| t.contains(&"backup=short".to_owned())),
        "the expired backup's snapshot is still in the repository: {tags:?}"
    );
    assert!(
        tags.iter().any(|t| t.contains(&"backup=long".to_owned())),
        "the kept backup's snapshot is gone: {tags:?}"
    );
    run_next_maintenance_job(&ferry, &[first_job]).await;
    let after = repository_bytes(&ferry).await;
    assert!(
        after + (6 << 20) < before,
        "maintenance gave back {} bytes of the expired backup's 8 MiB",
        before.saturating_sub(after)
    );
    let report = in_repository(&repository, password, |repository| {
        ferry_mover::check(
            repository,
            &ferry_mover::CheckOptions {
                read_data: true,
                ..Default::default()
            },
        )
        .unwrap()
    })
    .await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    drop(agent);
    ferry.stop().await;
}

/// The tags of every snapshot in the repository at `url`.
async fn snapshot_tags(url: &str, password: Vec<u8>) -> Vec<Vec<String>> {
    in_repository(url, password, |repository| {
        repository
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|(_, snapshot)| snapshot.tags)
            .collect()
    })
    .await
}

#[tokio::test]
async fn deleting_a_running_backup_is_queued_until_it_ends() {
    let ferry = RunningController::start_with_location("delete-running").await;
    let client = ferry.client.clone();
    let ca = agent_ca(&ferry).await;
    let agent = RunningAgent::start(&client, ferry.namespace.name(), &ca).await;
    let app = TestNamespace::create(&client, "delete-running-app").await;
    let ns = app.name();
    let data = agent.run_pod_with_volume(&client, ns, "db", "data").await;
    std::fs::write(data.join("table.db"), pseudo_random(32 << 20, 3)).unwrap();

    ferry
        .create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup",
                       "metadata": {"name": "busy"}, "spec": {"includedNamespaces": [ns]}}))
        .await;
    let backups = ferry.backups();
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    while backups.get("busy").await.unwrap().phase() != Some(Phase::WaitingForVolumes) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backup never waited for its volume: {}",
            summary(&backups.get("busy").await.unwrap())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What `ferry backup delete` does.
    let patch = json!({"metadata": {"annotations": {
        ferry_protocol::crd::DELETE_REQUESTED_ANNOTATION: jiff::Timestamp::now().to_string()}}});
    backups
        .patch("busy", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let mut queued = None;
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    // The deletion waits for the volume, says so, then takes everything.
    while let Some(backup) = backups.get_opt("busy").await.unwrap() {
        if let Some(message) = backup
            .status
            .as_ref()
            .and_then(|s| s.deletion_message.clone())
        {
            queued = Some(message);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backup was not deleted: {}",
            summary(&backup)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let queued = queued.expect("the status never said the deletion was queued");
    assert!(queued.contains("queued"), "{queued}");
    assert!(ferry.store.objects("backups/busy/").await.is_empty());
    let password = ferry.repository_password().await;
    let repository = ferry.repository_url(ns);
    let tags = snapshot_tags(&repository, password).await;
    assert!(
        tags.is_empty(),
        "the deleted backup's snapshot is still in the repository: {tags:?}"
    );
    drop(agent);
    ferry.stop().await;
}
