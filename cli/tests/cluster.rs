//! `ferry location|backup|restore` against the test environment's API server and MinIO, with
//! Ferry's controller running in the test process.

use std::process::Output;
use std::time::Duration;

use ferry_tests::{
    CONVERGENCE_TIMEOUT, CREDENTIALS_SECRET, RunningController, TestEnv, TestNamespace,
    create_object,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};

/// Runs the `ferry` binary against the test cluster, in the controller's namespace.
async fn ferry(controller: &RunningController, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(args)
        .env("KUBECONFIG", TestEnv::get().kubeconfig_path())
        .env("FERRY_NAMESPACE", controller.namespace.name());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        stderr(output),
        stdout(output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_backup_and_restore_commands_drive_the_controller() {
    let controller = RunningController::start("cli-cluster", false).await;
    let env = TestEnv::get();
    let credential = format!("{}:{}", CREDENTIALS_SECRET.0, CREDENTIALS_SECRET.1);
    let created = ferry(
        &controller,
        &[
            "location",
            "create",
            "main",
            "--bucket",
            controller.store.bucket(),
            "--prefix",
            controller.store.prefix(),
            "--region",
            env.s3_region(),
            "--endpoint",
            env.s3_endpoint(),
            "--force-path-style",
            "--credential",
            &credential,
            "--default",
        ],
    )
    .await;
    assert_ok(&created, "location create");

    // The controller validates it.
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let listed = ferry(&controller, &["location", "get", "main", "-o", "json"]).await;
        assert_ok(&listed, "location get");
        let locations: Value = serde_json::from_slice(&listed.stdout).unwrap();
        if locations[0]["status"]["phase"] == "Available" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the location never became available: {locations}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let table = ferry(&controller, &["location", "get"]).await;
    assert!(stdout(&table).contains("Available"), "{}", stdout(&table));

    // A snapshot location on moto's EC2: created, then validated by the controller.
    assert_ok(
        &ferry(
            &controller,
            &[
                "snapshot-location",
                "create",
                "ebs",
                "--region",
                env.ec2_region(),
                "--endpoint",
                env.ec2_endpoint(),
                "--credential",
                &credential,
            ],
        )
        .await,
        "snapshot-location create",
    );
    let bad_credential = ferry(
        &controller,
        &[
            "snapshot-location",
            "create",
            "x",
            "--region",
            "us-east-1",
            "--credential",
            "nokey",
        ],
    )
    .await;
    assert!(!bad_credential.status.success());
    assert!(
        stderr(&bad_credential).contains("SECRET:KEY"),
        "{}",
        stderr(&bad_credential)
    );
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let table = ferry(&controller, &["snapshot-location", "get", "ebs"]).await;
        assert_ok(&table, "snapshot-location get");
        if stdout(&table).contains("Available") {
            assert!(
                stdout(&table).contains(env.ec2_region()),
                "{}",
                stdout(&table)
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot location never became available: {}",
            stdout(&table)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let client = controller.client.clone();
    let app = TestNamespace::create(&client, "cli-app").await;
    create_object(
        &client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"k": "v"}}),
    )
    .await;

    let bad = ferry(
        &controller,
        &["backup", "create", "bad", "--selector", "a in (b"],
    )
    .await;
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--selector"), "{}", stderr(&bad));

    let backup = ferry(
        &controller,
        &[
            "backup",
            "create",
            "b1",
            "--include-namespaces",
            app.name(),
            "--wait",
            "-o",
            "json",
        ],
    )
    .await;
    assert_ok(&backup, "backup create --wait");
    let backups: Value = serde_json::from_slice(&backup.stdout).unwrap();
    assert_eq!(backups[0]["status"]["phase"], "Completed", "{backups}");

    let listed = ferry(&controller, &["backup", "get"]).await;
    assert!(
        stdout(&listed).contains("b1") && stdout(&listed).contains("Completed"),
        "{}",
        stdout(&listed)
    );
    let yaml = ferry(&controller, &["backup", "get", "b1", "-o", "yaml"]).await;
    assert!(
        stdout(&yaml).contains("phase: Completed"),
        "{}",
        stdout(&yaml)
    );
    let described = ferry(&controller, &["backup", "describe", "b1", "--details"]).await;
    assert_ok(&described, "backup describe");
    assert!(
        stdout(&described).contains(&format!("{}/settings", app.name())),
        "{}",
        stdout(&described)
    );
    assert_ok(
        &ferry(&controller, &["backup", "logs", "b1"]).await,
        "backup logs",
    );

    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("b1.tar.gz");
    let downloaded = ferry(
        &controller,
        &[
            "backup",
            "download",
            "b1",
            "--output-file",
            archive.to_str().unwrap(),
        ],
    )
    .await;
    assert_ok(&downloaded, "backup download");
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains(&format!(
            "resources/configmaps/namespaces/{}/settings.json",
            app.name()
        )),
        "{}",
        String::from_utf8_lossy(&listing.stdout)
    );

    // Lose the namespace, see the plan of its restore, then restore it.
    let app_name = app.name().to_owned();
    app.delete_and_wait().await;
    let plan = ferry(
        &controller,
        &[
            "restore",
            "create",
            "plan",
            "--from-backup",
            "b1",
            "--dry-run",
        ],
    )
    .await;
    assert_ok(&plan, "restore create --dry-run");
    let planned = stdout(&plan);
    assert!(planned.contains("Plan (nothing was created)"), "{planned}");
    assert!(
        planned
            .lines()
            .any(|line| line.starts_with("would-create") && line.contains("settings")),
        "{planned}"
    );
    assert!(
        planned.contains(&format!("namespace {app_name} does not exist yet")),
        "{planned}"
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &app_name)
            .get_opt("settings")
            .await
            .unwrap()
            .is_none(),
        "the dry run created the ConfigMap"
    );
    let restore = ferry(
        &controller,
        &["restore", "create", "r1", "--from-backup", "b1", "--wait"],
    )
    .await;
    assert_ok(&restore, "restore create --wait");
    assert!(
        stdout(&restore).contains("Completed"),
        "{}",
        stdout(&restore)
    );
    let settings = Api::<ConfigMap>::namespaced(client.clone(), &app_name)
        .get("settings")
        .await
        .expect("the ConfigMap is back");
    assert_eq!(settings.data.unwrap()["k"], "v");
    let results = ferry(&controller, &["restore", "logs", "r1"]).await;
    assert_ok(&results, "restore logs");
    assert!(
        stdout(&results)
            .lines()
            .any(|line| line.starts_with("created") && line.contains("settings")),
        "{}",
        stdout(&results)
    );

    // Deleting asks for confirmation, then removes the files and the resource.
    let unconfirmed = ferry(&controller, &["backup", "delete", "b1"]).await;
    assert!(!unconfirmed.status.success());
    assert!(
        stderr(&unconfirmed).contains("--confirm"),
        "{}",
        stderr(&unconfirmed)
    );
    assert_ok(
        &ferry(&controller, &["backup", "delete", "b1", "--confirm"]).await,
        "backup delete",
    );
    let left = env
        .s3_client()
        .list_objects_v2()
        .bucket(controller.store.bucket())
        .prefix(controller.store.key("backups/b1/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        left.key_count(),
        Some(0),
        "files of the deleted backup remain"
    );
    let gone = ferry(&controller, &["backup", "get", "b1"]).await;
    assert!(!gone.status.success());

    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let _ = namespaces
        .delete(&app_name, &kube::api::DeleteParams::default())
        .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_commands_create_pause_unpause_and_delete() {
    let clock = ferry_controller::Clock::manual("2026-11-26T10:00:30Z".parse().unwrap());
    let controller = RunningController::start_with_clock("cli-schedule", true, clock).await;
    let app = TestNamespace::create(&controller.client, "cli-sched-app").await;
    create_object(
        &controller.client,
        app.name(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"k": "v"}}),
    )
    .await;

    let bad = ferry(
        &controller,
        &[
            "schedule",
            "create",
            "bad",
            "--schedule",
            "61 * * * *",
            "--time-zone",
            "Europe/Atlantis",
        ],
    )
    .await;
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("five fields") && stderr(&bad).contains("Europe/Paris"),
        "{}",
        stderr(&bad)
    );

    let created = ferry(
        &controller,
        &[
            "schedule",
            "create",
            "nightly",
            "--schedule",
            "0 1 * * *",
            "--time-zone",
            "Europe/Paris",
            "--include-namespaces",
            app.name(),
            "--ttl",
            "72h",
        ],
    )
    .await;
    assert_ok(&created, "schedule create");
    // A new schedule backs up at once; the backup is named after the controller's time.
    let first = ferry_tests::finished(&controller.backups(), "nightly-20261126100030").await;
    assert_eq!(
        first.status.and_then(|s| s.phase),
        Some(ferry_protocol::crd::Phase::Completed)
    );
    assert_eq!(first.spec.ttl.as_deref(), Some("72h"));
    // Its latest completed backup is what --from-schedule restores (here, a plan of it).
    let plan = ferry(
        &controller,
        &[
            "restore",
            "create",
            "from-nightly",
            "--from-schedule",
            "nightly",
            "--dry-run",
        ],
    )
    .await;
    assert_ok(&plan, "restore create --from-schedule --dry-run");
    assert!(
        stderr(&plan).contains("restoring backup nightly-20261126100030, the latest completed backup of schedule nightly"),
        "{}",
        stderr(&plan)
    );
    let none = ferry(
        &controller,
        &["restore", "create", "--from-schedule", "weekly"],
    )
    .await;
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("schedule weekly has no completed backup"),
        "{}",
        stderr(&none)
    );

    // 01:00 in Paris is 00:00 UTC in November.
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let table = ferry(&controller, &["schedule", "get"]).await;
        assert_ok(&table, "schedule get");
        let text = stdout(&table);
        if text.contains("Enabled") && text.contains("2026-11-27 00:00:00") {
            assert!(
                text.contains("NEXT RUN") && text.contains("Europe/Paris"),
                "{text}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the schedule never showed Enabled with its next run: {text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let phase = |paused: &'static str| {
        let controller = &controller;
        async move {
            let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
            loop {
                let listed = ferry(controller, &["schedule", "get", "nightly", "-o", "json"]).await;
                assert_ok(&listed, "schedule get -o json");
                let schedules: Value = serde_json::from_slice(&listed.stdout).unwrap();
                if schedules[0]["status"]["phase"] == paused {
                    return schedules;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the schedule never became {paused}: {schedules}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_ok(
        &ferry(&controller, &["schedule", "pause", "nightly"]).await,
        "schedule pause",
    );
    let paused = phase("Paused").await;
    assert_eq!(paused[0]["spec"]["paused"], true);
    assert_ok(
        &ferry(&controller, &["schedule", "unpause", "nightly"]).await,
        "schedule unpause",
    );
    phase("Enabled").await;

    let described = ferry(&controller, &["schedule", "describe", "nightly"]).await;
    assert_ok(&described, "schedule describe");
    assert!(
        stdout(&described).contains("Backups:")
            && stdout(&described).contains("nightly-20261126100030"),
        "{}",
        stdout(&described)
    );
    let missing = ferry(&controller, &["schedule", "describe", "weekly"]).await;
    assert!(
        stderr(&missing).contains("ferry schedule get"),
        "{}",
        stderr(&missing)
    );

    let unconfirmed = ferry(&controller, &["schedule", "delete", "nightly"]).await;
    assert!(!unconfirmed.status.success());
    assert!(
        stderr(&unconfirmed).contains("--confirm"),
        "{}",
        stderr(&unconfirmed)
    );
    let deleted = ferry(&controller, &["schedule", "delete", "nightly", "--confirm"]).await;
    assert_ok(&deleted, "schedule delete");
    assert!(stderr(&deleted).contains("stay"), "{}", stderr(&deleted));
    assert!(
        !ferry(&controller, &["schedule", "get", "nightly"])
            .await
            .status
            .success()
    );
    // The backups it took stay.
    controller
        .backups()
        .get("nightly-20261126100030")
        .await
        .expect("the schedule's backup stays");

    app.delete_and_wait().await;
    controller.stop().await;
}

/// `ferry <args>` in `namespace`, with no controller.
async fn ferry_in(namespace: &str, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(args)
        .env("KUBECONFIG", TestEnv::get().kubeconfig_path())
        .env("FERRY_NAMESPACE", namespace);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// Which locations of `namespace` are marked default, by name.
async fn defaults(namespace: &str) -> Vec<String> {
    let listed = ferry_in(namespace, &["location", "get", "-o", "json"]).await;
    assert_ok(&listed, "location get");
    let locations: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let mut names: Vec<String> = locations
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["spec"]["default"] == true)
        .map(|l| l["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn one_location_is_the_default_at_a_time() {
    let env = TestEnv::get();
    let client = env.kube_client().await;
    // No controller runs here to install the CRDs, and on a fresh environment no other test may
    // have yet.
    ferry_tests::install_ferry_crds(&client).await;
    let namespace = TestNamespace::create(&client, "cli-default").await;
    let ns = namespace.name();
    for name in ["first", "second"] {
        let created = ferry_in(
            ns,
            &[
                "location",
                "create",
                name,
                "--bucket",
                "b",
                "--region",
                "r",
                "--default",
            ],
        )
        .await;
        assert_ok(&created, "location create --default");
    }
    assert_eq!(defaults(ns).await, ["second"], "create --default");
    let created = ferry_in(ns, &["location", "create", "third", "--bucket", "b"]).await;
    assert_ok(&created, "location create");
    assert_eq!(defaults(ns).await, ["second"], "create without --default");

    let set = ferry_in(ns, &["location", "set-default", "first"]).await;
    assert_ok(&set, "location set-default");
    assert!(
        stderr(&set).contains("location second is no longer the default"),
        "{}",
        stderr(&set)
    );
    assert_eq!(defaults(ns).await, ["first"], "set-default");

    let missing = ferry_in(ns, &["location", "set-default", "nowhere"]).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no location named nowhere"),
        "{}",
        stderr(&missing)
    );
    assert_eq!(defaults(ns).await, ["first"], "a failed set-default");
}

/// `GET <path>` on the controller's health address: the status code, if it answered.
async fn http_status(address: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn the_controller_connects_through_kubeconfig_and_context() {
    let env = TestEnv::get();
    let namespace = TestNamespace::create(&env.kube_client().await, "cli-kubeconfig").await;
    let kubeconfig = env.kubeconfig_path().to_owned();
    let context = kube::config::Kubeconfig::read_from(&kubeconfig)
        .unwrap()
        .current_context
        .expect("the environment's kubeconfig names its context");
    // Neither KUBECONFIG nor ~/.kube/config: only the flags say where the cluster is.
    let home = tempfile::tempdir().unwrap();
    let start = |context: &str| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["controller", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--context", context, "--namespace", namespace.name()])
            .args(["--health-address", &address])
            .env_remove("KUBECONFIG")
            .env("HOME", home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        (child, address)
    };

    let (mut controller, address) = start(&context);
    let deadline = tokio::time::Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        if http_status(&address, "/readyz").await == Some(200) {
            break;
        }
        if let Some(status) = controller.try_wait().unwrap() {
            let output = controller.wait_with_output().await.unwrap();
            panic!(
                "ferry controller --kubeconfig --context exited ({status}): {}",
                stderr(&output)
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ferry controller never became ready on {address}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    controller.kill().await.unwrap();

    // A context the kubeconfig does not have is named, not replaced by another.
    let (wrong, _) = start("no-such-context");
    let output = tokio::time::timeout(CONVERGENCE_TIMEOUT, wrong.wait_with_output())
        .await
        .expect("ferry controller with an unknown context exits")
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no-such-context"),
        "{}",
        stderr(&output)
    );
}
