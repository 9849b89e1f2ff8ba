//! Backup hooks on the test environment's real node: commands run through the API server's pod
//! exec in the backup's pods, from their annotations (Ferry's names and Velero's) or from the
//! Backup's spec, with their outcomes in the backup's log, results and status; and post hooks
//! that a restarted controller owes are run before it ends the backup.
//!
//! The PostgreSQL consistency story (fsfreeze under write load, restored five times) is step 7 of
//! `real_cluster.rs`, with Ferry installed from deploy/.

use std::time::Duration;

use ferry_protocol::crd::{Backup, Phase};
use ferry_protocol::layout::BackupKeys;
use ferry_tests::real_node::{env_with_node, exec, kubectl, real_node_namespace, run_pod, sleeper};
use ferry_tests::{RunningController, finished, summary};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

/// A sleeper pod (the node's Debian image, `/data` an emptyDir) with `annotations` and `labels`.
fn pod(name: &str, labels: Value, annotations: Value) -> Value {
    let mut pod = sleeper(name, labels);
    pod["metadata"]["annotations"] = annotations;
    pod
}

/// A hook of the spec: `command` in container `main`.
fn hook(command: &str, on_error: &str, timeout: &str) -> Value {
    json!({"exec": {"container": "main", "command": ["sh", "-c", command],
                    "onError": on_error, "timeout": timeout}})
}

/// Whether `path` exists in the pod.
fn exists(namespace: &str, pod: &str, path: &str) -> bool {
    exec(
        namespace,
        pod,
        &[
            "sh",
            "-c",
            &format!("test -e {path} && echo yes || echo no"),
        ],
    )
    .trim()
        == "yes"
}

/// The backup's log, as the controller stored it.
async fn backup_log(ferry: &RunningController, backup: &str) -> String {
    let log = ferry
        .read_bytes(&BackupKeys::new(None, backup).logs())
        .await;
    String::from_utf8(ferry_controller::gunzip(&log).unwrap()).unwrap()
}

#[tokio::test]
async fn backup_hooks_run_in_their_pods_and_every_outcome_is_reported() {
    let (_, client) = env_with_node().await;
    let ferry = RunningController::start_with_location("hooks").await;
    let app = real_node_namespace(&client, "hooks").await;
    let ns = app.name();

    // Velero's annotations, untouched: the pre hook writes a stamp that the post hook needs.
    run_pod(
        &client,
        ns,
        pod(
            "annotated",
            json!({}),
            json!({
                "pre.hook.backup.velero.io/container": "main",
                "pre.hook.backup.velero.io/command": r#"["/bin/sh", "-c", "date +%s%N >/data/pre && echo quiesced"]"#,
                "post.hook.backup.velero.io/command": "sh -c 'test -f /data/pre && date +%s%N >/data/post'",
            }),
        ),
    )
    .await;
    // The spec's hooks, by label: a failure that may Continue, one that must Fail (the pod's
    // later pre hooks are skipped, its post hooks still run), and one that runs past its timeout.
    for (name, app_label) in [
        ("checkpointed", "db"),
        ("failing", "failing"),
        ("slow", "slow"),
    ] {
        run_pod(&client, ns, pod(name, json!({"app": app_label}), json!({}))).await;
    }
    // A pod that never runs: its hooks are a warning, not a hang.
    let mut pending = pod(
        "pending",
        json!({}),
        json!({"pre.hook.backup.ferry.dev/command": "touch /data/pre"}),
    );
    pending["spec"]["nodeSelector"] = json!({"ferry.dev/no-such-node": "true"});
    let pending: Pod = serde_json::from_value(pending).unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pending)
        .await
        .unwrap();

    let spec = json!({
        "includedNamespaces": [ns],
        "hooks": {"resources": [
            {"name": "checkpoint", "labelSelector": {"matchLabels": {"app": "db"}},
             "pre": [hook("echo checkpoint >/data/pre", "Fail", "10s"),
                     hook("echo warming up >&2; exit 3", "Continue", "10s")],
             "post": [hook("echo thawed >/data/post", "Fail", "10s")]},
            {"name": "must-quiesce", "labelSelector": {"matchLabels": {"app": "failing"}},
             "pre": [hook("echo cannot quiesce >&2; exit 7", "Fail", "10s"),
                     hook("touch /data/never", "Fail", "10s")],
             "post": [hook("touch /data/post", "Fail", "10s")]},
            {"name": "slow", "labelSelector": {"matchLabels": {"app": "slow"}},
             "pre": [hook("sleep 30", "Continue", "2s")],
             "post": [hook("touch /data/post", "Fail", "10s")]},
        ]}
    });
    let backup = ferry.backup("hooked", spec).await;
    assert_eq!(
        backup.status.as_ref().and_then(|s| s.phase),
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&backup)
    );
    let status = backup.status.clone().unwrap();
    // annotated 2, checkpointed 3, failing 2 (its second pre hook skipped), slow 2.
    assert_eq!(
        (status.hooks_attempted, status.hooks_failed),
        (9, 3),
        "{}",
        summary(&backup)
    );
    assert!(status.post_hooks_pending.is_empty(), "{}", summary(&backup));
    assert_eq!(status.errors, 1, "{}", summary(&backup));

    assert!(
        exists(ns, "annotated", "/data/post"),
        "the annotated pod's post hook did not run after its pre hook"
    );
    assert_eq!(
        exec(ns, "checkpointed", &["cat", "/data/pre", "/data/post"]),
        "checkpoint\nthawed\n"
    );
    assert!(
        !exists(ns, "failing", "/data/never"),
        "a pre hook ran after one that failed with Fail"
    );
    assert!(
        exists(ns, "failing", "/data/post"),
        "the failing pod's post hook did not run"
    );
    assert!(
        exists(ns, "slow", "/data/post"),
        "the slow pod's post hook did not run"
    );

    let log = backup_log(&ferry, "hooked").await;
    let line = |needle: &str| -> String {
        log.lines()
            .find(|l| l.starts_with("hook ") && l.contains(needle))
            .unwrap_or_else(|| panic!("no hook line with {needle:?} in the log:\n{log}"))
            .to_owned()
    };
    let annotated = line(&format!("{ns}/annotated"));
    assert!(
        annotated.contains("annotations pre.hook.backup.velero.io")
            && annotated.contains("container main")
            && annotated.contains("exit 0")
            && annotated.contains("output: quiesced"),
        "{annotated}"
    );
    let warmed = line("exit 3");
    assert!(
        warmed.contains("output: warming up") && warmed.contains("\"checkpoint\""),
        "{warmed}"
    );
    assert!(line("exit 7").contains("output: cannot quiesce"));
    assert!(line("timed out after 2 s").contains(&format!("{ns}/slow")));
    assert!(line(&format!("{ns}/pending")).contains("not run: the pod is Pending"));

    let results: Value = ferry
        .read_json(&BackupKeys::new(None, "hooked").results())
        .await
        .unwrap();
    let errors: Vec<&str> = results["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 1, "{results}");
    assert!(
        errors[0].contains(&format!("pre hook \"must-quiesce\" of pod {ns}/failing"))
            && errors[0].contains("exited with code 7"),
        "{}",
        errors[0]
    );
    let warnings = results["warnings"].to_string();
    for expected in ["exited with code 3", "timed out after 2 s", "pending"] {
        assert!(
            warnings.contains(expected),
            "{expected:?} not in the warnings: {warnings}"
        );
    }
    ferry.stop().await;
}

#[tokio::test]
async fn a_restarted_controller_runs_the_post_hooks_a_backup_owes_before_ending_it() {
    let (_, client) = env_with_node().await;
    let mut ferry = RunningController::start_with_location("hooks-restart").await;
    let app = real_node_namespace(&client, "hooks-restart").await;
    let ns = app.name();
    // The pre hook "freezes" and takes its time: the controller stops while it runs.
    run_pod(
        &client,
        ns,
        pod(
            "frozen",
            json!({}),
            json!({
                "pre.hook.backup.ferry.dev/command": r#"["sh", "-c", "touch /data/frozen; sleep 20"]"#,
                "pre.hook.backup.ferry.dev/timeout": "1m",
                "post.hook.backup.ferry.dev/command": "sh -c 'rm /data/frozen && touch /data/thawed'",
            }),
        ),
    )
    .await;
    ferry
        .create(json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup",
                       "metadata": {"name": "interrupted"}, "spec": {"includedNamespaces": [ns]}}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let owed = ferry
            .backups()
            .get("interrupted")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.post_hooks_pending == [format!("{ns}/frozen")]);
        if owed && exists(ns, "frozen", "/data/frozen") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pre hook never ran with its post hook recorded as owed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.crash().await;
    ferry.restart();
    let ended: Backup = finished(&ferry.backups(), "interrupted").await;
    let status = ended.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Failed), "{}", summary(&ended));
    let reason = status.failure_reason.unwrap_or_default();
    assert!(reason.contains("the post hooks of 1 pods ran"), "{reason}");
    assert!(status.post_hooks_pending.is_empty(), "{}", summary(&ended));
    assert!(
        exists(ns, "frozen", "/data/thawed"),
        "the owed post hook did not run"
    );
    assert!(!exists(ns, "frozen", "/data/frozen"));
    let _ = kubectl(&["-n", ns, "delete", "pod", "--all", "--wait=false"]);
    ferry.stop().await;
}

#[tokio::test]
async fn restore_hooks_prepare_restored_pods_and_the_restore_waits_for_them() {
    let (env, client) = env_with_node().await;
    let ferry = RunningController::start_with_location("restore-hooks").await;
    let app = real_node_namespace(&client, "restore-hooks").await;
    let ns = app.name();
    let image = env.var("FERRY_TEST_BASE_IMAGE");
    // Velero's init hook prepares the pod's emptyDir; Ferry's exec hook reads what it prepared.
    run_pod(
        &client,
        ns,
        pod(
            "annotated",
            json!({}),
            json!({
                "init.hook.restore.velero.io/container-image": image,
                "init.hook.restore.velero.io/container-name": "prepare",
                "init.hook.restore.velero.io/command": r#"["sh", "-c", "echo prepared >/data/init"]"#,
                "post.hook.restore.ferry.dev/command": r#"["sh", "-c", "test \"$(cat /data/init)\" = prepared && echo ran >/data/exec"]"#,
                "post.hook.restore.ferry.dev/wait-for-ready": "true",
            }),
        ),
    )
    .await;
    run_pod(
        &client,
        ns,
        pod("selected", json!({"app": "db"}), json!({})),
    )
    .await;
    // Never Ready: its hook waits 5 s, then fails.
    let mut unready = pod("unready", json!({"app": "unready"}), json!({}));
    unready["spec"]["containers"][0]["readinessProbe"] =
        json!({"exec": {"command": ["false"]}, "periodSeconds": 1});
    run_pod(&client, ns, unready).await;
    let backup = ferry
        .backup("restore-hooks", json!({"includedNamespaces": [ns]}))
        .await;
    assert_eq!(
        backup.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Completed),
        "{}",
        summary(&backup)
    );

    let target = format!("{ns}-restored");
    let exec_hook = |command: &str, on_error: &str| {
        json!({"exec": {"container": "main", "command": ["sh", "-c", command], "onError": on_error,
                        "execTimeout": "20s"}})
    };
    let restore = ferry
        .restore(
            "with-hooks",
            json!({
                "backupName": "restore-hooks",
                "namespaceMapping": {ns: &target},
                "hooks": {"resources": [
                    {"name": "seed", "includedNamespaces": [ns],
                     "labelSelector": {"matchLabels": {"app": "db"}},
                     "postHooks": [
                        {"init": {"initContainers": [{"name": "seed", "image": image,
                            "command": ["sh", "-c", "echo seeded >/data/seed"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                        exec_hook("cat /data/seed >/data/exec", "Fail"),
                        exec_hook("echo broken >&2; exit 4", "Fail"),
                        exec_hook("touch /data/after-failure", "Fail"),
                     ]},
                    {"name": "ready-first", "labelSelector": {"matchLabels": {"app": "unready"}},
                     "postHooks": [{"exec": {"container": "main", "command": ["true"],
                        "waitForReady": true, "waitTimeout": "5s", "onError": "Continue"}}]},
                ]}
            }),
        )
        .await;
    let status = restore.status.clone().unwrap();
    assert_eq!(
        status.phase,
        Some(Phase::PartiallyFailed),
        "{}",
        summary(&restore)
    );
    // annotated 1, selected 2 (its last hook skipped after one that failed with Fail), unready 1.
    assert_eq!(
        (status.hooks_attempted, status.hooks_failed),
        (4, 2),
        "{}",
        summary(&restore)
    );
    assert!(status.exec_hooks_pending.is_empty());

    let pods = Api::<Pod>::namespaced(client.clone(), &target);
    let restored = pods.get("annotated").await.unwrap();
    let init: Vec<String> = restored
        .spec
        .unwrap()
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(init, ["prepare"]);
    assert_eq!(exec(&target, "annotated", &["cat", "/data/exec"]), "ran\n");
    assert_eq!(
        exec(&target, "selected", &["cat", "/data/exec"]),
        "seeded\n"
    );
    assert!(!exists(&target, "selected", "/data/after-failure"));

    let log = ferry
        .read_bytes(&ferry_protocol::layout::RestoreKeys::new(None, "with-hooks").logs())
        .await;
    let log = String::from_utf8(ferry_controller::gunzip(&log).unwrap()).unwrap();
    assert!(
        log.contains("exited with code 4") && log.contains("output: broken"),
        "{log}"
    );
    assert!(log.contains("was not Ready within 5 s"), "{log}");
    let _ = kubectl(&["delete", "namespace", &target, "--wait=false"]);
    ferry.stop().await;
}
