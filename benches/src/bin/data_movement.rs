//! Snapshot data movement of one CSI volume through Ferry installed on the test environment's real
//! node, against the standalone data mover (`ferry volume backup`) on the same data: what the
//! orchestration costs (issue 18). Against the test environment with its CSI stack:
//!
//!   tests/env/up
//!   cargo build --workspace --tests                     # the ferry binary both sides run
//!   cargo build -p ferry-benches --features cluster --bins
//!   $CARGO_TARGET_DIR/debug/data_movement --size 2GiB
//!
//! Ferry is installed as the tests install it (its image from the `ferry` binary of the build,
//! `kubectl apply -k`); the data set is written straight into the CSI driver's directory of a
//! claim no pod mounts, which the backup then moves: a CSI snapshot (the driver copies the
//! directory), a claim made from it (another copy), a pod mounting it, the node's agent reading
//! it into the namespace's repository on MinIO, the temporaries and the snapshot deleted. The
//! standalone data mover backs up the same directory into a repository of its own on the same
//! MinIO. Both run the same binary.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use ferry_benches::dataset::{self, Layout};
use ferry_benches::measure;
use ferry_benches::units::{fmt_bytes, parse_size};
use ferry_tests::real_cluster::{Cluster, FERRY_NAMESPACE, configure_location, load_ferry_image};
use ferry_tests::{BucketPrefix, TestEnv, ferry_binary, unique_name, wait_bound};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Api;

const NAMESPACE: &str = "bench-move";

#[derive(Parser)]
struct Args {
    /// The data set's size.
    #[arg(long, value_parser = parse_size, default_value = "2GiB")]
    size: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = TestEnv::get();
    let class = env.var("FERRY_TEST_CSI_STORAGE_CLASS");
    if class.is_empty() {
        bail!("the test environment has no CSI stack: tests/env/down && tests/env/up");
    }
    let main = Cluster::main().await;
    main.remove_namespace(NAMESPACE).await;
    main.remove_namespace(FERRY_NAMESPACE).await;
    let store = BucketPrefix::new(env, "bench-move");
    eprintln!("installing Ferry");
    let image = load_ferry_image();
    main.install_ferry(&image).await;
    configure_location(&main, &store);

    main.kubectl_ok(&["create", "namespace", NAMESPACE]);
    let claim_size = format!("{}Mi", args.size * 3 / 2 / (1 << 20) + 64);
    main.kubectl_with_input(
        &["apply", "-f", "-"],
        &serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": NAMESPACE},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": claim_size}}}})
        .to_string(),
    );
    wait_bound(&main.client, NAMESPACE, "data").await;
    let claim = Api::<PersistentVolumeClaim>::namespaced(main.client.clone(), NAMESPACE)
        .get("data")
        .await?;
    let pv_name = claim.spec.and_then(|s| s.volume_name).context("bound")?;
    let pv = Api::<PersistentVolume>::all(main.client.clone())
        .get(&pv_name)
        .await?;
    let handle = pv
        .spec
        .and_then(|s| s.csi)
        .map(|csi| csi.volume_handle)
        .context("a CSI volume")?;
    let source = PathBuf::from(env.var("FERRY_TEST_CSI_DATA_DIR"))
        .join("volumes")
        .join(&handle)
        .join("data");
    eprintln!("writing {} into {}", fmt_bytes(args.size), source.display());
    let data_set = dataset::generate(&Layout::new(args.size, args.seed), &source)?;

    eprintln!("Ferry: backup with snapshot data movement");
    let backup = unique_name("bench-move");
    let started = Instant::now();
    let output = main.ferry_ok(&[
        "backup",
        "create",
        &backup,
        "--include-namespaces",
        NAMESPACE,
        "--snapshot-move-data",
        "--wait",
    ]);
    let moved = started.elapsed();
    if !output.contains("Completed") {
        bail!("the backup did not complete: {output}");
    }
    let agent = main.ferry_pod("agent").await;
    let log = main.kubectl_ok(&[
        "-n",
        FERRY_NAMESPACE,
        "logs",
        agent.metadata.name.as_deref().unwrap_or_default(),
    ]);
    let agent_seconds = log
        .lines()
        .filter(|line| line.contains("\"task ended\"") && line.contains("-move-"))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| line["duration_seconds"].as_f64())
        .next_back()
        .context("the agent's move task in its log")?;

    eprintln!("standalone: repo init, volume backup");
    let credentials = env.s3_credentials();
    let repository = format!("{}/standalone-{}", store.url(), unique_name("r"));
    let standalone = |args: &[&str]| {
        let mut command = std::process::Command::new(ferry_binary());
        command
            .env("FERRY_REPO", &repository)
            .env("FERRY_S3_ENDPOINT", env.s3_endpoint())
            .env("FERRY_S3_REGION", env.s3_region())
            .env("FERRY_S3_PATH_STYLE", "true")
            .env("FERRY_PASSWORD", "bench-move-standalone")
            .env("AWS_ACCESS_KEY_ID", credentials.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key())
            .args(args);
        command
    };
    measure::run(&mut standalone(&["repo", "init"]))?;
    let by_hand = measure::run(standalone(&["volume", "backup"]).arg(&source))?;

    let ratio = moved.as_secs_f64() / by_hand.wall.as_secs_f64();
    println!("| what | s |");
    println!("|---|---|");
    println!(
        "| data set | {} in {} files |",
        fmt_bytes(data_set.bytes),
        data_set.files
    );
    println!(
        "| Ferry: `ferry backup create --snapshot-move-data --wait`, end to end | {:.2} |",
        moved.as_secs_f64()
    );
    println!(
        "| of which the agent's task (reading the volume into the repository) | {agent_seconds:.2} |"
    );
    println!(
        "| standalone `ferry volume backup` of the same directory | {:.2} |",
        by_hand.wall.as_secs_f64()
    );
    println!("| ratio, end to end / standalone | {ratio:.2} |");
    println!(
        "| orchestration and storage (end to end less the agent's task) | {:.2} |",
        moved.as_secs_f64() - agent_seconds
    );

    main.ferry_ok(&["backup", "delete", &backup, "--confirm"]);
    main.remove_namespace(NAMESPACE).await;
    Ok(())
}
