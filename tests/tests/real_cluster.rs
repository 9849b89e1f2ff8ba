//! The product's central story, end to end on the test environment's real node, with Ferry
//! installed as users install it (`kubectl apply -k` of deploy/, through tests/env/ferry-deploy,
//! which only names the image built here) and driven with `kubectl` and the `ferry` CLI:
//!
//! 1. Ferry's controller and agent run as pods and become Ready on the node.
//! 2. Namespace `production`: PostgreSQL (a StatefulSet whose claim binds a `local`
//!    PersistentVolume, which no native snapshotter covers), a client Deployment, Services, a
//!    ConfigMap and a Secret; more than 100 MiB of rows, their count and checksum recorded.
//! 3. `ferry backup create prod-1 --include-namespaces production --wait`: the database volume is
//!    backed up by the agent pod of the node.
//! 4. The namespace and its volume are deleted (and the disk wiped); `ferry restore create`: the
//!    StatefulSet's pod waits in `ferry-restore-wait` until the agent has written its volume,
//!    then PostgreSQL starts on it with the same rows.
//! 5. A clone beside it (`--namespace-mappings production:staging`) binds a new volume, never the
//!    original's, and has the same rows; the original is untouched.
//! 6. The agent pod is deleted in the middle of a backup: the DaemonSet brings it back, the volume
//!    is tried again and the backup completes; the repository checks clean.
//! 7. Hooks (README, "Hooks"): PostgreSQL on an ext4 filesystem of its own (a loop device under a
//!    `local` volume), a writer moving money between accounts without pause. With the documented
//!    hooks (CHECKPOINT, then `fsfreeze` from a privileged sidecar; thawed after), five backups
//!    taken while the writer runs each restore into a new namespace where PostgreSQL starts
//!    without repair and the sum of the balances is what it was. A pre hook that fails with
//!    `Fail` leaves the backup PartiallyFailed and the database thawed.
//! 8. A brand-new cluster (the recovery control plane, with the node taken over from the main
//!    one): Ferry installed there and pointed at the same bucket sees the backup; without the
//!    repository password Secret kept from the original installation the restore fails naming
//!    it (and no new password is made), with it the restore brings the rows back.
//!
//! One test, in order, because each step builds on the last and step 8 takes the node away from
//! every other test: this binary holds nothing else. On failure, what the test made is left for
//! inspection (the next run removes it first); the node always goes back to the main cluster.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_protocol::volume::{VolumeMethod, VolumePhase, VolumeRecord};
use ferry_tests::real_cluster::{
    Cluster, FERRY_NAMESPACE, NodeTakeover, configure_location, eventually, is_pod_ready,
    load_ferry_image, node_name, volume_records,
};
use ferry_tests::{BucketPrefix, TestEnv, unique_name};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::Value;

const PRODUCTION: &str = "production";
const STAGING: &str = "staging";
const STORAGE_CLASS: &str = "ferry-local";
/// Labels the PersistentVolumes this test makes, so that a later run finds what a failed one left.
const VOLUME_LABEL: &str = "ferry.dev/real-cluster-test";
/// Rows of about 1 KiB: with its index the table takes about 125 MiB.
const ROWS: u64 = 110_000;
const MIN_TABLE_BYTES: u64 = 100 * 1024 * 1024;
/// Written into the database's volume before the backup whose agent is deleted, so that the
/// backup runs for seconds, not a blink: it does not compress or deduplicate.
const BULK_MIB: u64 = 400;
/// How long a `--wait`ed backup or restore, or a pod waiting for its volume, may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);

// Several threads: the test blocks on kubectl and ferry while it watches the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_survives_deletion_cloning_a_lost_agent_and_a_new_cluster() {
    let started = Instant::now();
    let step = |what: &str| {
        eprintln!(
            "[real_cluster {:6.1} s] {what}",
            started.elapsed().as_secs_f64()
        )
    };
    let env = TestEnv::get();
    let main = Cluster::main().await;
    let recovery = Cluster::recovery().await;

    step("removing what an earlier run left");
    for cluster in [&main, &recovery] {
        remove_leftovers(cluster).await;
    }
    remove_old_disks(&env.run_dir().join("local-volumes"));
    let store = BucketPrefix::new(env, "real-cluster");
    let disks = env
        .run_dir()
        .join("local-volumes")
        .join(unique_name("real-cluster"));

    // 1. Installed as users install it.
    step("building and loading Ferry's image");
    let image = load_ferry_image();
    step("kubectl apply -k tests/env/ferry-deploy (deploy/ with the image built here)");
    main.install_ferry(&image).await;
    configure_location(&main, &store);

    // 2. The application.
    step("deploying PostgreSQL, its client, Services, a ConfigMap and a Secret in production");
    main.kubectl_with_input(&["apply", "-f", "-"], &storage_class());
    let production_pv = unique_name("production-db");
    main.kubectl_with_input(
        &["apply", "-f", "-"],
        &local_volume(
            &production_pv,
            &disk(&disks, "production"),
            Some((PRODUCTION, "data-postgres-0")),
        ),
    );
    main.kubectl_with_input(&["apply", "-f", "-"], &application(PRODUCTION));
    wait_for_postgres(&main, PRODUCTION).await;
    step("loading the table");
    psql(
        &main,
        PRODUCTION,
        &[
            "create table t (id int primary key, payload text)",
            &format!(
                "insert into t select i, (select string_agg(md5(i::text || '-' || j), '') \
                 from generate_series(1, 32) j) from generate_series(1, {ROWS}) i"
            ),
            "vacuum analyze t",
            // On disk before the backup reads the files: the client only reads from now on.
            "checkpoint",
        ],
    );
    let table_bytes: u64 = psql(&main, PRODUCTION, &["select pg_total_relation_size('t')"])
        .trim()
        .parse()
        .expect("a size");
    assert!(
        table_bytes >= MIN_TABLE_BYTES,
        "the table takes {table_bytes} bytes, less than 100 MiB"
    );
    let original = table(&main, PRODUCTION);
    assert_eq!(original.rows, ROWS);
    wait_for_client(&main, PRODUCTION).await;

    // 3. Backed up by the agent pod of the node.
    step("ferry backup create prod-1 --include-namespaces production --wait");
    let output = main.ferry_ok(&[
        "backup",
        "create",
        "prod-1",
        "--include-namespaces",
        PRODUCTION,
        "--wait",
    ]);
    assert!(output.contains("Completed"), "{output}");
    let backup = ferry_json(&main, &["backup", "get", "prod-1"]);
    let pod_volumes = &backup[0]["status"]["podVolumes"];
    assert_eq!(
        (
            pod_volumes["total"].as_u64(),
            pod_volumes["completed"].as_u64()
        ),
        (Some(1), Some(1)),
        "{pod_volumes}"
    );
    assert!(
        pod_volumes["bytesDone"].as_u64().unwrap_or(0) >= MIN_TABLE_BYTES,
        "{pod_volumes}"
    );
    let record = database_record(&main, &store, "prod-1", &production_pv).await;
    let pod_volume = record
        .pod_volume
        .clone()
        .expect("the pod volume the agent read");
    assert_eq!(record.method, VolumeMethod::FileSystem, "{record:?}");
    assert_eq!(record.phase, VolumePhase::Completed, "{record:?}");
    assert_eq!(
        (
            pod_volume.namespace.as_str(),
            pod_volume.pod.as_str(),
            pod_volume.volume.as_str(),
            pod_volume.node.as_str()
        ),
        (PRODUCTION, "postgres-0", "data", node_name())
    );
    let file_system = record.file_system.clone().expect("a file-level backup");
    let agent = agent_pod(&main).await;
    let agent_log = main.kubectl_ok(&["-n", FERRY_NAMESPACE, "logs", &agent.name_any()]);
    assert!(
        agent_log
            .lines()
            .any(|line| line.contains("\"task ended\"") && line.contains(&file_system.task_id)),
        "the agent pod {} of node {} did not run task {}; its log:\n{agent_log}",
        agent.name_any(),
        node_name(),
        file_system.task_id
    );

    // 4. The disaster, and the restore.
    step("kubectl delete namespace production, and its volume");
    main.kubectl_ok(&["delete", "namespace", PRODUCTION, "--timeout=120s"]);
    main.kubectl_ok(&[
        "delete",
        "persistentvolume",
        &production_pv,
        "--timeout=60s",
    ]);
    wipe(&disk(&disks, "production"));
    step("ferry restore create prod-1-restore --from-backup prod-1 --wait");
    let watcher = tokio::spawn(watch_restore_wait(main.clone(), PRODUCTION));
    let output = main.ferry_ok(&[
        "restore",
        "create",
        "prod-1-restore",
        "--from-backup",
        "prod-1",
        "--wait",
    ]);
    assert!(output.contains("Completed"), "{output}");
    let seen = watcher.await.expect("the init container watcher");
    assert!(
        seen.running_before_postgres,
        "ferry-restore-wait was never seen running before PostgreSQL started: {seen:?}"
    );
    wait_for_postgres(&main, PRODUCTION).await;
    let restore = ferry_json(&main, &["restore", "get", "prod-1-restore"]);
    let restore_uid = restore[0]["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_owned();
    check_restored_pod(&main, PRODUCTION, &image).await;
    let marker = disk(&disks, "production")
        .join(".ferry")
        .join(format!("{restore_uid}.done"));
    assert!(
        marker.is_file(),
        "no completion marker {}",
        marker.display()
    );
    assert_eq!(
        table(&main, PRODUCTION),
        original,
        "the restored table differs"
    );
    let labels = Api::<Namespace>::all(main.client.clone())
        .get(PRODUCTION)
        .await
        .expect("the restored namespace")
        .labels()
        .clone();
    assert_eq!(
        labels.get("ferry.dev/real-node").map(String::as_str),
        Some("true"),
        "the namespace came back without its labels: {labels:?}"
    );
    wait_for_client(&main, PRODUCTION).await;

    // 5. A clone beside the original.
    step("ferry restore create prod-1-clone --namespace-mappings production:staging --wait");
    let spare_pv = unique_name("spare");
    main.kubectl_with_input(
        &["apply", "-f", "-"],
        &local_volume(&spare_pv, &disk(&disks, "spare"), None),
    );
    let production_pod_uid = pod(&main, PRODUCTION, "postgres-0").await.uid();
    let output = main.ferry_ok(&[
        "restore",
        "create",
        "prod-1-clone",
        "--from-backup",
        "prod-1",
        "--namespace-mappings",
        "production:staging",
        "--wait",
    ]);
    assert!(output.contains("Completed"), "{output}");
    wait_for_postgres(&main, STAGING).await;
    assert_eq!(
        claim_volume(&main, STAGING).await,
        spare_pv,
        "the clone's claim"
    );
    assert_eq!(
        claim_volume(&main, PRODUCTION).await,
        production_pv,
        "the original's claim"
    );
    let log = main.ferry_ok(&["restore", "logs", "prod-1-clone"]);
    assert!(
        log.lines()
            .any(|line| line.starts_with("skipped") && line.contains(&production_pv)),
        "the original's PersistentVolume was not left alone:\n{log}"
    );
    assert_eq!(table(&main, STAGING), original, "the clone's table differs");
    psql(
        &main,
        STAGING,
        &["insert into t values (0, 'the clone only')"],
    );
    assert_eq!(table(&main, STAGING).rows, ROWS + 1);
    assert_eq!(
        table(&main, PRODUCTION),
        original,
        "the clone changed the original"
    );
    let production_pod = pod(&main, PRODUCTION, "postgres-0").await;
    assert_eq!(
        production_pod.uid(),
        production_pod_uid,
        "the original's pod was replaced"
    );
    assert!(is_pod_ready(&production_pod));

    // 6. The agent pod deleted in the middle of a backup.
    step("the agent pod deleted in the middle of backup prod-2");
    exec(
        &main,
        PRODUCTION,
        &[
            "sh",
            "-c",
            &format!("head -c {BULK_MIB}M /dev/urandom >/var/lib/postgresql/data/bulk.bin"),
        ],
    );
    let agent = agent_pod(&main).await;
    main.ferry_ok(&[
        "backup",
        "create",
        "prod-2",
        "--include-namespaces",
        PRODUCTION,
    ]);
    let backups =
        Api::<ferry_protocol::crd::Backup>::namespaced(main.client.clone(), FERRY_NAMESPACE);
    eventually(
        "backup prod-2 handing its volume to the agent",
        OPERATION_TIMEOUT,
        || {
            let backups = backups.clone();
            async move {
                let backup = backups.get_opt("prod-2").await.ok()??;
                let phase = backup.status.as_ref()?.phase?;
                assert!(
                    !phase.is_terminal(),
                    "backup prod-2 ended before the agent was deleted: {phase:?}"
                );
                (phase == ferry_protocol::crd::Phase::WaitingForVolumes).then_some(())
            }
        },
    )
    .await;
    main.kubectl_ok(&[
        "-n",
        FERRY_NAMESPACE,
        "delete",
        "pod",
        &agent.name_any(),
        "--timeout=60s",
    ]);
    let replacement = agent_pod(&main).await;
    assert_ne!(
        replacement.name_any(),
        agent.name_any(),
        "the DaemonSet's new agent pod"
    );
    let finished = eventually("backup prod-2 to finish", OPERATION_TIMEOUT, || {
        let backups = backups.clone();
        async move {
            let backup = backups.get_opt("prod-2").await.ok()??;
            backup
                .status
                .as_ref()?
                .phase?
                .is_terminal()
                .then_some(backup)
        }
    })
    .await;
    let status = serde_json::to_value(&finished.status).unwrap();
    assert_eq!(status["phase"], "Completed", "{status}");
    let retried = database_record(&main, &store, "prod-2", &production_pv).await;
    let attempts = retried.file_system.as_ref().map_or(0, |fs| fs.attempts);
    assert!(
        attempts >= 2,
        "the deleted agent's attempt was not cut short and tried again (attempts {attempts}): \
         the backup ended before the agent stopped; give it more data: {retried:?}"
    );
    assert_eq!(retried.phase, VolumePhase::Completed, "{retried:?}");
    assert!(
        retried
            .file_system
            .as_ref()
            .is_some_and(|fs| fs.bytes >= BULK_MIB << 20),
        "{retried:?}"
    );
    // The user keeps the installation's key outside the cluster, as `ferry key export` gives it.
    let password_file = tempfile::NamedTempFile::new().expect("a temporary file");
    main.ferry_ok(&[
        "key",
        "export",
        "--output-file",
        password_file.path().to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(
        std::fs::read(password_file.path()).expect("the exported key"),
        repository_password(&main).await,
        "ferry key export wrote another key than the cluster's"
    );
    step("ferry repo check --read-data on the namespace's repository");
    check_repository(&store, password_file.path());

    // 7. Application-consistent backups of a database under write load.
    hooks_keep_a_database_consistent_under_write_load(&main, &disks, &step).await;

    // 8. A brand-new cluster. The user kept the repository password (README, "Disaster recovery").
    step("the disaster: the main cluster's application is gone; the node joins a new cluster");
    main.kubectl_ok(&["delete", "namespace", PRODUCTION, STAGING, "--timeout=120s"]);
    main.kubectl_ok(&[
        "delete",
        "persistentvolume",
        &production_pv,
        &spare_pv,
        "--timeout=60s",
    ]);
    wipe(&disk(&disks, "production"));
    wipe(&disk(&disks, "spare"));
    let takeover = NodeTakeover::to_recovery();
    step("installing Ferry in the new cluster, pointed at the same bucket");
    recovery.kubectl_with_input(&["apply", "-f", "-"], &storage_class());
    recovery.install_ferry(&image).await;
    configure_location(&recovery, &store);
    step("without the kept key: the location names the Secret to create, nothing is synced");
    let message = eventually(
        "the location names the missing key",
        ferry_tests::CONVERGENCE_TIMEOUT,
        || {
            let location = ferry_json(&recovery, &["location", "get", "default"]);
            let message = location[0]["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            async move {
                message
                    .contains("ferry-repository-password")
                    .then_some(message)
            }
        },
    )
    .await;
    assert!(
        message.contains("kubectl -n ferry-system create secret generic ferry-repository-password")
            && message.contains("kept from that installation"),
        "{message}"
    );
    assert!(
        !recovery
            .ferry(&["backup", "get", "prod-1"])
            .status
            .success(),
        "a backup was synced without the installation's key"
    );
    let secrets = Api::<Secret>::namespaced(recovery.client.clone(), FERRY_NAMESPACE);
    assert!(
        secrets
            .get_opt("ferry-repository-password")
            .await
            .unwrap()
            .is_none(),
        "the controller made a new key where backups exist"
    );
    assert!(
        Api::<Namespace>::all(recovery.client.clone())
            .get_opt(PRODUCTION)
            .await
            .unwrap()
            .is_none(),
        "objects were created without the key"
    );

    step("bringing the kept key, and restoring");
    recovery.kubectl_ok(&[
        "-n",
        FERRY_NAMESPACE,
        "create",
        "secret",
        "generic",
        "ferry-repository-password",
        &format!("--from-file=password={}", password_file.path().display()),
    ]);
    eventually(
        "backup prod-1 synced from the bucket",
        ferry_tests::CONVERGENCE_TIMEOUT,
        || {
            let found = recovery
                .ferry(&["backup", "get", "prod-1"])
                .status
                .success();
            async move { found.then_some(()) }
        },
    )
    .await;
    let output = recovery.ferry_ok(&[
        "restore",
        "create",
        "prod-1-dr-2",
        "--from-backup",
        "prod-1",
        "--wait",
    ]);
    assert!(output.contains("Completed"), "{output}");
    wait_for_postgres(&recovery, PRODUCTION).await;
    check_restored_pod(&recovery, PRODUCTION, &image).await;
    assert_eq!(
        table(&recovery, PRODUCTION),
        original,
        "the table restored in the new cluster differs"
    );
    wait_for_client(&recovery, PRODUCTION).await;

    step("giving the node back");
    remove_leftovers(&recovery).await;
    drop(takeover);
    remove_leftovers(&main).await;
    let _ = std::fs::remove_dir_all(&disks);
    drop(store);
    step("done");
}

const BANK: &str = "bank";
const ACCOUNTS: u64 = 100;
const OPENING_BALANCE: u64 = 1000;
const CONSISTENCY_RUNS: usize = 5;

/// Step 7: see the module's documentation.
async fn hooks_keep_a_database_consistent_under_write_load(
    main: &Cluster,
    disks: &Path,
    step: &dyn Fn(&str),
) {
    step("hooks: PostgreSQL on an ext4 filesystem of its own, a writer moving money without pause");
    let filesystem = LoopFilesystem::create(&disks.join("bank.img"), &disk(disks, "bank"));
    let bank_pv = unique_name("bank-db");
    main.kubectl_with_input(
        &["apply", "-f", "-"],
        &local_volume(
            &bank_pv,
            &filesystem.mount_point,
            Some((BANK, "data-postgres-0")),
        ),
    );
    main.kubectl_with_input(&["apply", "-f", "-"], &bank_application(BANK));
    wait_for_postgres(main, BANK).await;
    psql(
        main,
        BANK,
        &[
            "create table accounts (id int primary key, balance bigint not null)",
            &format!(
                "insert into accounts select i, {OPENING_BALANCE} from generate_series(1, {ACCOUNTS}) i"
            ),
            "create table transfers (n bigint not null)",
            "insert into transfers values (0)",
            // One transfer a transaction: the sum of the balances never changes.
            &format!(
                "create procedure move_money() language plpgsql as $$ \
                 declare a int; b int; begin loop \
                   a := 1 + floor(random() * {ACCOUNTS})::int; \
                   b := 1 + floor(random() * {ACCOUNTS})::int; \
                   update accounts set balance = balance - 1 where id = a; \
                   update accounts set balance = balance + 1 where id = b; \
                   update transfers set n = n + 1; \
                   commit; perform pg_sleep(0.002); \
                 end loop; end $$"
            ),
        ],
    );
    main.kubectl_with_input(&["apply", "-f", "-"], &bank_writer(BANK));
    let writing = |after: u64| async move {
        eventually(
            "the writer moving money",
            OPERATION_TIMEOUT,
            move || async move { (transfers(main, BANK) > after).then_some(()) },
        )
        .await;
    };
    writing(0).await;

    for run in 1..=CONSISTENCY_RUNS {
        let name = format!("bank-{run}");
        step(&format!(
            "hooks {run}/{CONSISTENCY_RUNS}: ferry backup create {name} while the writer runs"
        ));
        let before = transfers(main, BANK);
        let output = main.ferry_ok(&[
            "backup",
            "create",
            &name,
            "--include-namespaces",
            BANK,
            "--wait",
        ]);
        assert!(output.contains("Completed"), "{output}");
        let status = &ferry_json(main, &["backup", "get", &name])[0]["status"];
        assert_eq!(
            (
                status["hooksAttempted"].as_u64(),
                status["hooksFailed"].as_u64()
            ),
            (Some(2), None),
            "{status}"
        );
        assert_eq!(status["podVolumes"]["completed"], 1, "{status}");
        // The writer went on during the backup, and goes on after it: thawed.
        let during = transfers(main, BANK);
        assert!(during > before, "no transfer since the backup started");
        writing(during).await;

        let copy = format!("bank-copy-{run}");
        let copy_pv = unique_name("bank-copy");
        main.kubectl_with_input(
            &["apply", "-f", "-"],
            &local_volume(
                &copy_pv,
                &disk(disks, &copy),
                Some((copy.as_str(), "data-postgres-0")),
            ),
        );
        let output = main.ferry_ok(&[
            "restore",
            "create",
            &format!("{name}-restore"),
            "--from-backup",
            &name,
            "--namespace-mappings",
            &format!("{BANK}:{copy}"),
            // The copy is for reading: no writer there (its Deployment, ReplicaSet and pod).
            "--selector",
            "app!=writer",
            "--wait",
        ]);
        assert!(output.contains("Completed"), "{output}");
        // PostgreSQL starts on the restored files without anyone repairing them...
        wait_for_postgres(main, &copy).await;
        // ... and no transfer is half there.
        let totals = psql(
            main,
            &copy,
            &[
                "select count(*), sum(balance) from accounts",
                "select n from transfers",
            ],
        );
        let mut lines = totals.lines();
        assert_eq!(
            lines.next(),
            Some(format!("{ACCOUNTS}|{}", ACCOUNTS * OPENING_BALANCE).as_str()),
            "run {run}: the restored balances do not add up"
        );
        let restored_transfers: u64 = lines.next().unwrap_or_default().parse().expect("a count");
        assert!(
            restored_transfers >= before,
            "run {run}: the copy holds {restored_transfers} transfers, fewer than the {before} done before the backup"
        );
        main.kubectl_ok(&["delete", "namespace", &copy, "--timeout=120s"]);
        main.kubectl_ok(&["delete", "persistentvolume", &copy_pv, "--timeout=60s"]);
    }

    step("hooks: a pre hook that fails with Fail, from the Backup's spec");
    // The pod's own annotations would win over the spec's hooks (as in Velero): taken off the
    // running pod (its StatefulSet keeps them).
    main.kubectl_ok(&[
        "-n",
        BANK,
        "annotate",
        "pod",
        "postgres-0",
        "pre.hook.backup.velero.io/container-",
        "pre.hook.backup.velero.io/command-",
        "post.hook.backup.velero.io/container-",
        "post.hook.backup.velero.io/command-",
    ]);
    let before = transfers(main, BANK);
    main.kubectl_with_input(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: ferry.dev/v1alpha1
kind: Backup
metadata: {{name: bank-refused, namespace: {FERRY_NAMESPACE}}}
spec:
  includedNamespaces: [{BANK}]
  hooks:
    resources:
      - name: quiesce
        includedNamespaces: [{BANK}]
        labelSelector: {{matchLabels: {{app: postgres}}}}
        pre:
          - exec: {{container: postgres, command: [psql, -U, postgres, -c, CHECKPOINT]}}
          - exec: {{container: fsfreeze, command: [fsfreeze, --freeze, /var/lib/postgresql/data]}}
          - exec: {{container: fsfreeze, command: [sh, -c, "echo the replica is behind >&2; exit 3"], onError: Fail}}
        post:
          - exec: {{container: fsfreeze, command: [fsfreeze, --unfreeze, /var/lib/postgresql/data]}}
"#
        ),
    );
    let backups =
        Api::<ferry_protocol::crd::Backup>::namespaced(main.client.clone(), FERRY_NAMESPACE);
    let refused = eventually("backup bank-refused to finish", OPERATION_TIMEOUT, || {
        let backups = backups.clone();
        async move {
            let backup = backups.get_opt("bank-refused").await.ok()??;
            let status = backup.status?;
            status.phase?.is_terminal().then_some(status)
        }
    })
    .await;
    assert_eq!(
        (refused.phase, refused.hooks_attempted, refused.hooks_failed),
        (Some(ferry_protocol::crd::Phase::PartiallyFailed), 4, 1),
        "{refused:?}"
    );
    // Thawed: the writer goes on.
    writing(before).await;
    let described = main.ferry_ok(&["backup", "describe", "bank-refused", "--details"]);
    assert!(
        described.contains("Hooks:")
            && described.contains("exited with code 3")
            && described.contains("the replica is behind")
            && described.contains("hook post"),
        "{described}"
    );

    main.kubectl_ok(&["delete", "namespace", BANK, "--timeout=120s"]);
    main.kubectl_ok(&["delete", "persistentvolume", &bank_pv, "--timeout=60s"]);
    drop(filesystem);
}

/// The count of transfers the writer made in `namespace`.
fn transfers(cluster: &Cluster, namespace: &str) -> u64 {
    psql(cluster, namespace, &["select n from transfers"])
        .trim()
        .parse()
        .expect("a count of transfers")
}

/// An ext4 filesystem in a file, mounted through a loop device: a volume `fsfreeze` can freeze
/// without freezing the machine. Thawed and unmounted when dropped.
struct LoopFilesystem {
    mount_point: PathBuf,
}

impl LoopFilesystem {
    fn create(image: &Path, mount_point: &Path) -> LoopFilesystem {
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let output = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|error| panic!("running {program}: {error}"));
            assert!(
                output.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        std::fs::File::create(image)
            .and_then(|file| file.set_len(1 << 30))
            .unwrap_or_else(|error| panic!("creating {}: {error}", image.display()));
        run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        );
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mount_point.as_os_str(),
            ],
        );
        LoopFilesystem {
            mount_point: mount_point.to_owned(),
        }
    }
}

impl Drop for LoopFilesystem {
    fn drop(&mut self) {
        unmount(&self.mount_point);
    }
}

/// Thaws (in case a hook left it frozen) and unmounts the filesystem at `mount_point`.
fn unmount(mount_point: &Path) {
    let _ = std::process::Command::new("fsfreeze")
        .arg("--unfreeze")
        .arg(mount_point)
        .output();
    let _ = std::process::Command::new("umount")
        .arg(mount_point)
        .output();
}

/// The bank: PostgreSQL as in [`application`], with a privileged sidecar that can freeze its
/// filesystem, and the hooks of README's recipe as the pod template's annotations (Velero's
/// names: an application annotated for Velero needs no change).
fn bank_application(namespace: &str) -> String {
    let postgres = TestEnv::get().var("FERRY_TEST_POSTGRES_IMAGE");
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
  labels: {{ferry.dev/real-node: "true"}}
---
apiVersion: v1
kind: Service
metadata: {{name: postgres, namespace: {namespace}}}
spec:
  selector: {{app: postgres}}
  ports: [{{port: 5432}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: postgres, namespace: {namespace}}}
spec:
  serviceName: postgres
  replicas: 1
  selector: {{matchLabels: {{app: postgres}}}}
  template:
    metadata:
      labels: {{app: postgres}}
      annotations:
        pre.hook.backup.velero.io/container: fsfreeze
        pre.hook.backup.velero.io/command: '["/bin/sh", "-c", "psql -h 127.0.0.1 -U postgres -c CHECKPOINT && fsfreeze --freeze /var/lib/postgresql/data"]'
        post.hook.backup.velero.io/container: fsfreeze
        post.hook.backup.velero.io/command: '["fsfreeze", "--unfreeze", "/var/lib/postgresql/data"]'
    spec:
      terminationGracePeriodSeconds: 10
      containers:
        - name: postgres
          image: {postgres}
          imagePullPolicy: IfNotPresent
          args: [postgres, -c, max_wal_size=128MB]
          env: [{{name: PGDATA, value: /var/lib/postgresql/data/pgdata}}]
          ports: [{{containerPort: 5432}}]
          readinessProbe:
            exec: {{command: [pg_isready, -U, postgres, -h, 127.0.0.1]}}
            periodSeconds: 2
          volumeMounts: [{{name: data, mountPath: /var/lib/postgresql/data}}]
        - name: fsfreeze
          image: {postgres}
          imagePullPolicy: IfNotPresent
          command: [sleep, infinity]
          securityContext: {{privileged: true}}
          volumeMounts: [{{name: data, mountPath: /var/lib/postgresql/data}}]
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: {STORAGE_CLASS}
        resources: {{requests: {{storage: 2Gi}}}}
"#
    )
}

/// The writer: calls `move_money()` through the Service, again whenever its connection drops.
fn bank_writer(namespace: &str) -> String {
    let postgres = TestEnv::get().var("FERRY_TEST_POSTGRES_IMAGE");
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: writer, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: writer}}}}
  template:
    metadata: {{labels: {{app: writer}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: writer
          image: {postgres}
          imagePullPolicy: IfNotPresent
          command:
            - sh
            - -c
            - 'while :; do psql -h "$POSTGRES_SERVICE_HOST" -U postgres -c "call move_money()"; sleep 1; done'
"#
    )
}

/// Removes what this test makes in `cluster`: the application's namespaces, Ferry's installation
/// (its namespace: the cluster-wide objects stay, as other tests share the CRDs), the test's
/// PersistentVolumes and their disks' contents.
async fn remove_leftovers(cluster: &Cluster) {
    let copies = (1..=CONSISTENCY_RUNS).map(|run| format!("bank-copy-{run}"));
    for namespace in [PRODUCTION, STAGING, BANK, FERRY_NAMESPACE]
        .map(str::to_owned)
        .into_iter()
        .chain(copies)
    {
        cluster.remove_namespace(&namespace).await;
    }
    let pvs = Api::<PersistentVolume>::all(cluster.client.clone());
    let labelled = pvs
        .list(&ListParams::default().labels(VOLUME_LABEL))
        .await
        .expect("listing PersistentVolumes");
    for pv in labelled {
        ferry_tests::delete_pv_and_wait(&cluster.client, &pv.name_any()).await;
    }
}

/// Removes the disks earlier runs left (their volumes are gone by now), unmounting the
/// filesystems of step 7 first.
fn remove_old_disks(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for mount_point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
        if Path::new(mount_point).starts_with(dir) {
            unmount(Path::new(mount_point));
        }
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("real-cluster-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn disk(disks: &Path, name: &str) -> PathBuf {
    let dir = disks.join(name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|error| panic!("creating {}: {error}", dir.display()));
    dir
}

/// Empties a disk's directory, as a lost disk replaced by a new one.
fn wipe(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("reading a disk") {
        let path = entry.expect("a disk entry").path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.unwrap_or_else(|error| panic!("removing {}: {error}", path.display()));
    }
}

fn storage_class() -> String {
    format!(
        "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {STORAGE_CLASS}}}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
"
    )
}

/// A `local` PersistentVolume on the node at `path`; reserved for `claim` when given.
fn local_volume(name: &str, path: &Path, claim: Option<(&str, &str)>) -> String {
    let claim_ref = claim
        .map(|(namespace, claim)| {
            format!("  claimRef: {{namespace: {namespace}, name: {claim}}}\n")
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
  labels: {{{VOLUME_LABEL}: \"true\"}}
spec:
  capacity: {{storage: 2Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: {STORAGE_CLASS}
{claim_ref}  local: {{path: {path}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{node}]}}]
",
        path = path.display(),
        node = node_name(),
    )
}

/// The application: PostgreSQL as a StatefulSet with a claim on the `local` StorageClass, a
/// client Deployment that queries it through its Service, a headless Service for the StatefulSet,
/// the client's ConfigMap and Secret.
fn application(namespace: &str) -> String {
    let postgres = TestEnv::get().var("FERRY_TEST_POSTGRES_IMAGE");
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {namespace}
  # The real scheduler places its pods on the node (tests/env/cluster.yaml).
  labels: {{ferry.dev/real-node: "true"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: client-settings, namespace: {namespace}}}
data: {{QUERY: "select count(*) from t", INTERVAL: "2"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: client-credentials, namespace: {namespace}}}
stringData: {{PGUSER: postgres}}
---
apiVersion: v1
kind: Service
metadata: {{name: postgres, namespace: {namespace}}}
spec:
  selector: {{app: postgres}}
  ports: [{{port: 5432}}]
---
apiVersion: v1
kind: Service
metadata: {{name: postgres-pods, namespace: {namespace}}}
spec:
  clusterIP: None
  selector: {{app: postgres}}
  ports: [{{port: 5432}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: postgres, namespace: {namespace}}}
spec:
  serviceName: postgres-pods
  replicas: 1
  selector: {{matchLabels: {{app: postgres}}}}
  template:
    metadata: {{labels: {{app: postgres}}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
        - name: postgres
          image: {postgres}
          imagePullPolicy: IfNotPresent
          # The volume's root holds Ferry's .ferry after a restore: the data is one level down.
          env: [{{name: PGDATA, value: /var/lib/postgresql/data/pgdata}}]
          ports: [{{containerPort: 5432}}]
          readinessProbe:
            exec: {{command: [pg_isready, -U, postgres, -h, 127.0.0.1]}}
            periodSeconds: 2
          volumeMounts: [{{name: data, mountPath: /var/lib/postgresql/data}}]
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: {STORAGE_CLASS}
        resources: {{requests: {{storage: 2Gi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
        - name: client
          image: {postgres}
          imagePullPolicy: IfNotPresent
          envFrom: [{{configMapRef: {{name: client-settings}}}}, {{secretRef: {{name: client-credentials}}}}]
          # No cluster DNS: the Service's address comes in its environment variables, which exist
          # when the Service did as the container started.
          command:
            - sh
            - -c
            - ': "${{POSTGRES_SERVICE_HOST:?no Service postgres yet}}"; while :; do psql -h "$POSTGRES_SERVICE_HOST" -Atc "$QUERY" 2>&1 | tail -n 1; sleep "$INTERVAL"; done'
"#
    )
}

async fn pod(cluster: &Cluster, namespace: &str, name: &str) -> Pod {
    Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|error| panic!("reading pod {namespace}/{name}: {error}"))
}

/// The agent pod of the node, running and Ready.
async fn agent_pod(cluster: &Cluster) -> Pod {
    cluster.ferry_pod("agent").await
}

/// Waits until PostgreSQL's pod is Ready (its probe: pg_isready); when it never is, fails with
/// what the cluster says of the namespace, the pod and its containers' logs.
async fn wait_for_postgres(cluster: &Cluster, namespace: &str) {
    let api = Api::<Pod>::namespaced(cluster.client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(pod)) = api.get_opt("postgres-0").await
            && is_pod_ready(&pod)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let show = |args: &[&str]| {
        let output = cluster.kubectl(args);
        format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let report = [
        show(&["-n", namespace, "get", "pods,pvc", "-o", "wide"]),
        show(&["get", "pv", "-o", "wide"]),
        show(&["-n", namespace, "describe", "pod", "postgres-0"]),
        show(&[
            "-n",
            namespace,
            "logs",
            "postgres-0",
            "-c",
            "ferry-restore-wait",
        ]),
        show(&[
            "-n",
            namespace,
            "logs",
            "postgres-0",
            "--all-containers",
            "--tail=40",
        ]),
        show(&[
            "-n",
            FERRY_NAMESPACE,
            "logs",
            "daemonset/ferry-agent",
            "--tail=40",
        ]),
    ]
    .join("\n");
    panic!(
        "waited {OPERATION_TIMEOUT:?} for PostgreSQL Ready in {namespace} ({} cluster):\n{report}",
        cluster.name
    );
}

/// Waits until the client Deployment's pod reads the table's row count through the Service, with
/// its ConfigMap and Secret.
async fn wait_for_client(cluster: &Cluster, namespace: &str) {
    let what = format!("the client in {namespace} counting the rows");
    eventually(&what, OPERATION_TIMEOUT, || {
        let output = cluster.kubectl(&["-n", namespace, "logs", "deploy/client", "--tail=1"]);
        async move {
            let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            (line == ROWS.to_string()).then_some(())
        }
    })
    .await;
}

/// Checks the restored PostgreSQL pod: its init container `ferry-restore-wait` ran Ferry's image
/// (the controller's own, pulled as the controller's is), waited for the agent, and ended well.
async fn check_restored_pod(
    cluster: &Cluster,
    namespace: &str,
    image: &ferry_tests::real_cluster::FerryImage,
) {
    let pod = pod(cluster, namespace, "postgres-0").await;
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().expect("init containers")[0];
    assert_eq!(init.name, "ferry-restore-wait");
    assert_eq!(
        init.image.as_deref(),
        Some(image.name.as_str()),
        "the init container's image"
    );
    assert_eq!(init.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let status = &pod
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap_or_else(|| panic!("ferry-restore-wait has not ended: {status:?}"));
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    let log = cluster.kubectl_ok(&[
        "-n",
        namespace,
        "logs",
        "postgres-0",
        "-c",
        "ferry-restore-wait",
    ]);
    // It let the pod go only once the volume was restored. Whether it saw the volume unrestored
    // first depends on who is quicker, the agent or the kubelet starting the init container: a
    // small volume can be restored before the container's first look.
    assert!(
        log.trim_end()
            .ends_with("every volume is restored; starting the pod")
            && log.lines().all(|line| line
                .starts_with("ferry: waiting for the node agent to restore 1 volume(s)")
                || line == "ferry: every volume is restored; starting the pod"),
        "ferry-restore-wait's log:\n{log}"
    );
}

/// What the init container watcher saw.
#[derive(Debug, Default)]
struct Seen {
    /// `ferry-restore-wait` running while PostgreSQL had not started.
    running_before_postgres: bool,
    /// PostgreSQL's container started.
    postgres_started: bool,
}

/// Follows the restored `postgres-0` of `namespace` until PostgreSQL's container starts.
async fn watch_restore_wait(cluster: Cluster, namespace: &'static str) -> Seen {
    let api = Api::<Pod>::namespaced(cluster.client.clone(), namespace);
    let deadline = Instant::now() + OPERATION_TIMEOUT;
    let mut seen = Seen::default();
    while Instant::now() < deadline && !seen.postgres_started {
        if let Ok(Some(pod)) = api.get_opt("postgres-0").await
            && let Some(status) = pod.status
        {
            let waiting = status
                .init_container_statuses
                .unwrap_or_default()
                .iter()
                .any(|s| {
                    s.name == "ferry-restore-wait"
                        && s.state.as_ref().is_some_and(|s| s.running.is_some())
                });
            seen.postgres_started = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .any(|s| {
                    s.state
                        .as_ref()
                        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                });
            seen.running_before_postgres |= waiting && !seen.postgres_started;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// The PersistentVolume the claim of `namespace`'s PostgreSQL is bound to.
async fn claim_volume(cluster: &Cluster, namespace: &str) -> String {
    let claim = Api::<PersistentVolumeClaim>::namespaced(cluster.client.clone(), namespace)
        .get("data-postgres-0")
        .await
        .expect("the claim");
    assert_eq!(
        claim.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Bound"),
        "{namespace}/data-postgres-0"
    );
    claim.spec.and_then(|s| s.volume_name).unwrap_or_default()
}

fn exec(cluster: &Cluster, namespace: &str, command: &[&str]) -> String {
    let mut args = vec![
        "-n",
        namespace,
        "exec",
        "postgres-0",
        "-c",
        "postgres",
        "--",
    ];
    args.extend_from_slice(command);
    cluster.kubectl_ok(&args)
}

/// Runs `statements` with psql in PostgreSQL's pod, each in its own transaction.
fn psql(cluster: &Cluster, namespace: &str, statements: &[&str]) -> String {
    let mut command = vec!["psql", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt"];
    for statement in statements {
        command.extend(["-c", statement]);
    }
    exec(cluster, namespace, &command)
}

/// The table's row count and a checksum of its rows in order.
#[derive(Debug, PartialEq, Eq)]
struct Table {
    rows: u64,
    checksum: String,
}

fn table(cluster: &Cluster, namespace: &str) -> Table {
    let line = psql(
        cluster,
        namespace,
        &["select count(*), md5(string_agg(md5(t::text), '' order by id)) from t"],
    );
    let (rows, checksum) = line
        .trim()
        .split_once('|')
        .unwrap_or_else(|| panic!("psql said {line:?}"));
    Table {
        rows: rows.parse().expect("a count"),
        checksum: checksum.to_owned(),
    }
}

/// `ferry <args> -o json`, parsed.
fn ferry_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    serde_json::from_str(&cluster.ferry_ok(&args)).expect("ferry's JSON")
}

/// The volume record of PersistentVolume `pv` in backup `backup`, as the controller wrote it.
async fn database_record(
    cluster: &Cluster,
    store: &BucketPrefix,
    backup: &str,
    pv: &str,
) -> VolumeRecord {
    volume_records(cluster, store, backup)
        .await
        .volumes
        .into_iter()
        .find(|r| r.persistent_volume == pv)
        .unwrap_or_else(|| panic!("backup {backup} has no record of {pv}"))
}

async fn repository_password(cluster: &Cluster) -> Vec<u8> {
    ferry_tests::installation_key(&cluster.client, FERRY_NAMESPACE).await
}

/// `ferry repo check --read-data` of production's repository, from this machine.
fn check_repository(store: &BucketPrefix, password_file: &Path) {
    let env = TestEnv::get();
    let credentials = env.s3_credentials();
    let repo = format!("{}/repositories/{PRODUCTION}", store.url());
    let output = std::process::Command::new(ferry_tests::ferry_binary())
        .args([
            "repo",
            "check",
            "--read-data",
            "--repo",
            &repo,
            "--s3-endpoint",
            env.s3_endpoint(),
            "--s3-path-style",
            // The installed controller's maintenance Job may be pruning the repository under its
            // exclusive lock right now; the check waits for it as a user's would.
            "--retry-lock",
            "300",
        ])
        .arg("--password-file")
        .arg(password_file)
        .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
        .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
        .output()
        .expect("running ferry repo check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "ferry repo check --read-data {repo}:\n{text}"
    );
    assert!(
        text.contains("no errors"),
        "ferry repo check --read-data {repo}:\n{text}"
    );
}
