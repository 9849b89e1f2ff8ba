//! Metadata backup and restore of many objects through Ferry's controller, against the test
//! environment (`tests/env/up`): objects per second each way.
//!
//!   tests/env/up
//!   cargo build -p ferry-benches --features cluster --bins
//!   $CARGO_TARGET_DIR/debug/metadata --objects 10000
//!
//! The controller runs in this process (dependencies optimised, Ferry's own crates at the dev
//! profile); the API server, etcd and MinIO run on loopback on the same machine.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use ferry_protocol::crd::{Backup, Phase, Restore};
use ferry_tests::{RunningController, TestNamespace, create_object};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kube::{Api, Resource};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Secrets in the backed-up namespace.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_protocol::tls::install_crypto_provider();
    let args = Args::parse();
    let controller = RunningController::start("bench-metadata", true).await;
    let client = controller.client.clone();
    let app = TestNamespace::create(&client, "bench-metadata").await;
    let app_name = app.name().to_owned();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &app_name);
    let started = Instant::now();
    futures::stream::iter(0..args.objects)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("secret-{i:06}"), "labels": {"bench": "metadata"}},
                    "stringData": {"password": format!("value-{i}"), "config": "x".repeat(200)},
                }))
                .expect("a Secret");
                secrets.create(&PostParams::default(), &secret).await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .context("creating the Secrets")?;
    eprintln!(
        "created {} Secrets in {:.1} s (the API server's own rate, for scale)",
        args.objects,
        started.elapsed().as_secs_f64()
    );

    let ns = controller.namespace.name().to_owned();
    let started = Instant::now();
    create_object(
        &client,
        &ns,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "many"},
               "spec": {"includedNamespaces": [app_name]}}),
    )
    .await;
    let backup = finished::<Backup>(&Api::namespaced(client.clone(), &ns), "many", |b| {
        b.status.as_ref().and_then(|s| s.phase)
    })
    .await?;
    let backup_time = started.elapsed();
    let backed_up = backup
        .status
        .and_then(|s| s.progress)
        .map(|p| p.items_done)
        .unwrap_or(0);

    app.delete_and_wait().await;

    let started = Instant::now();
    create_object(
        &client,
        &ns,
        json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "many-back"},
               "spec": {"backupName": "many"}}),
    )
    .await;
    let restore = finished::<Restore>(&Api::namespaced(client.clone(), &ns), "many-back", |r| {
        r.status.as_ref().and_then(|s| s.phase)
    })
    .await?;
    let restore_time = started.elapsed();
    let restored = secrets
        .list(&ListParams::default().labels("bench=metadata"))
        .await?
        .items
        .len();
    if restored != args.objects {
        bail!(
            "{restored} of {} Secrets came back: {:?}",
            args.objects,
            restore.status
        );
    }

    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!("| way | objects | seconds | objects/s |");
    println!("|---|---|---|---|");
    println!(
        "| backup | {backed_up} | {:.1} | {:.0} |",
        backup_time.as_secs_f64(),
        rate(backed_up, backup_time)
    );
    println!(
        "| restore | {restored} | {:.1} | {:.0} |",
        restore_time.as_secs_f64(),
        rate(restored as u64, restore_time)
    );

    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let _ = namespaces
        .delete(&app_name, &kube::api::DeleteParams::default())
        .await;
    controller.stop().await;
    Ok(())
}

/// Polls until the resource reaches a final phase.
async fn finished<K>(
    api: &Api<K>,
    name: &str,
    phase: impl Fn(&K) -> Option<Phase>,
) -> anyhow::Result<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let object = api.get(name).await?;
        match phase(&object) {
            Some(Phase::Completed) => return Ok(object),
            Some(Phase::PartiallyFailed | Phase::Failed | Phase::FailedValidation) => {
                bail!("{name} did not complete: {object:?}")
            }
            _ if Instant::now() > deadline => bail!("{name} did not finish in 15 minutes"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
