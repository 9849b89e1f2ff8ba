//! The controller's metrics change as backups and restores run: read as `/metrics` serves them
//! (`Metrics::encode`), from a controller running in the test process against the test API
//! server and MinIO.

use ferry_protocol::crd::Phase;
use ferry_tests::{HasPhase, RunningController, TestNamespace, create_object, summary};
use serde_json::json;

/// The value of the sample `series` (name and labels, as the text format writes them) in
/// OpenMetrics `text`; 0 when it is not there yet (a family's first sample appears when it is
/// first recorded).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("a sample value"))
}

#[tokio::test]
async fn metrics_change_as_backups_and_restores_run() {
    let ferry = RunningController::start_with_location("metrics").await;
    let client = ferry.client.clone();
    let app = TestNamespace::create(&client, "metrics-app").await;
    create_object(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
               "data": {"mode": "fast"}}),
    )
    .await;

    let before = ferry.metrics.encode();
    let completed = "ferry_backups_total{result=\"Completed\"}";
    let durations = "ferry_backup_duration_seconds_count";
    let items = "ferry_backup_items_total";
    let backup = ferry
        .backup("nightly-1", json!({"includedNamespaces": [app.name()]}))
        .await;
    assert_eq!(
        backup.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );
    let after = metrics_when(&ferry, |text| {
        sample(text, completed) > sample(&before, completed)
    })
    .await;
    assert_eq!(
        sample(&after, completed),
        sample(&before, completed) + 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, durations),
        sample(&before, durations) + 1.0,
        "{after}"
    );
    // The ConfigMap, the namespace and its default ServiceAccount and root CA ConfigMap.
    assert!(
        sample(&after, items) >= sample(&before, items) + 2.0,
        "{after}"
    );
    assert_eq!(sample(&after, "ferry_backups_in_progress"), 0.0, "{after}");
    let ended = backup.status.unwrap().completion_timestamp.unwrap().0;
    assert_eq!(
        sample(
            &after,
            "ferry_backup_last_success_timestamp_seconds{schedule=\"\"}"
        ),
        ended.as_second() as f64,
        "{after}"
    );

    // A backup that cannot run ends counted by its phase.
    let invalid = ferry
        .backup("invalid-1", json!({"storageLocation": "no-such-location"}))
        .await;
    assert_eq!(invalid.phase(), Some(Phase::FailedValidation));
    let failed_validation = "ferry_backups_total{result=\"FailedValidation\"}";
    let text = metrics_when(&ferry, |text| sample(text, failed_validation) >= 1.0).await;
    assert_eq!(
        sample(&text, "ferry_backups_total{result=\"FailedValidation\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, durations),
        sample(&after, durations),
        "{text}"
    );

    let copy = format!("{}-copy", app.name());
    let restore = ferry
        .restore(
            "nightly-1-copy",
            json!({"backupName": "nightly-1", "namespaceMapping": {app.name(): copy.clone()}}),
        )
        .await;
    assert_eq!(
        restore.phase(),
        Some(Phase::Completed),
        "{}",
        summary(&restore)
    );
    let restored = "ferry_restores_total{result=\"Completed\"}";
    let text = metrics_when(&ferry, |text| sample(text, restored) >= 1.0).await;
    assert_eq!(
        sample(&text, "ferry_restores_total{result=\"Completed\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "ferry_restore_duration_seconds_count"),
        1.0,
        "{text}"
    );
    ferry_tests::delete_namespace_and_wait(&client, &copy).await;
    ferry.stop().await;
}

/// The controller's metrics once `settled` holds of them, or after 10 s: an ending's metrics are
/// recorded just after the status that the test saw is written.
async fn metrics_when(ferry: &RunningController, settled: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = ferry.metrics.encode();
        if settled(&text) || tokio::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
