//! `ferry backup|restore|schedule|location|snapshot-location`: Ferry's resources in a cluster, as
//! `velero` users know them, one file per resource; what they share (the cluster options, the
//! scope flags, getting, listing, waiting for and printing a resource) is here.
//! The commands create and read the resources; the controller does the work. Logs, results and
//! downloads are read from the storage location with the credentials its Secret names, as the
//! controller reads them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use ferry_protocol::crd::{BackupSpec, Phase, Progress, SecretKeyRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{GlobalArgs, OutputFormat};

mod backup;
mod key;
mod location;
mod restore;
mod schedule;
mod snapshot_location;

pub use backup::{BackupCommand, run_backup};
pub use key::{KeyCommand, run_key};
pub use location::{LocationCommand, run_location};
pub use restore::{RestoreCommand, run_restore};
pub use schedule::{ScheduleCommand, run_schedule};
pub use snapshot_location::{SnapshotLocationCommand, run_snapshot_location};

/// Where the cluster is and which namespace Ferry runs in.
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster options")]
pub struct ClusterArgs {
    /// The kubeconfig file (else $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (else its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace Ferry's controller runs in and keeps its resources in.
    #[arg(
        short = 'n',
        long = "namespace",
        env = "FERRY_NAMESPACE",
        default_value = "ferry-system",
        global = true
    )]
    namespace: String,
}

impl ClusterArgs {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer()
                .await
                .context("no kubeconfig found: pass --kubeconfig or set KUBECONFIG")?,
        };
        Ok(Client::try_from(config)?)
    }
}

/// What a backup takes and where it goes: `ferry backup create`'s flags, and the template of
/// `ferry schedule create`.
#[derive(Debug, Args)]
pub struct BackupTemplate {
    #[command(flatten)]
    scope: Scope,
    /// How long the backup is kept (e.g. 720h, 30d).
    #[arg(long)]
    ttl: Option<String>,
    /// The storage location (else the default one).
    #[arg(long)]
    storage_location: Option<String>,
    /// Take native snapshots of volumes.
    #[arg(long)]
    snapshot_volumes: Option<bool>,
    /// The VolumeSnapshotLocations to snapshot through (default: every one), comma-separated.
    #[arg(long, value_delimiter = ',')]
    volume_snapshot_locations: Vec<String>,
    /// The VolumeSnapshotClass of a CSI driver, as driver=class, comma-separated (default: the
    /// driver's class labelled ferry.dev/csi-volumesnapshot-class=true).
    #[arg(long, value_delimiter = ',', value_parser = driver_and_class)]
    volume_snapshot_classes: Vec<(String, String)>,
    /// How long a CSI snapshot may take to be ready to use (e.g. 10m, the default).
    #[arg(long)]
    csi_snapshot_timeout: Option<String>,
    /// Move each CSI snapshot's data into the repository through the node agents, then delete
    /// the snapshot: the backup survives the loss of the cluster's storage.
    #[arg(long)]
    snapshot_move_data: bool,
    /// Back up every pod volume by file through the node agents, not by snapshots.
    #[arg(long)]
    default_volumes_to_fs_backup: Option<bool>,
}

/// `driver=class`.
fn driver_and_class(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((driver, class)) if !driver.is_empty() && !class.is_empty() => {
            Ok((driver.to_owned(), class.to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not driver=class, e.g. ebs.csi.aws.com=csi-aws-vsc"
        )),
    }
}

impl BackupTemplate {
    fn spec(self) -> anyhow::Result<BackupSpec> {
        let scope = self.scope;
        Ok(BackupSpec {
            label_selector: scope.label_selector()?,
            included_namespaces: scope.include_namespaces,
            excluded_namespaces: scope.exclude_namespaces,
            included_resources: scope.include_resources,
            excluded_resources: scope.exclude_resources,
            include_cluster_resources: scope.include_cluster_resources,
            ttl: self.ttl,
            storage_location: self.storage_location,
            snapshot_volumes: self.snapshot_volumes,
            volume_snapshot_locations: self.volume_snapshot_locations,
            volume_snapshot_classes: self.volume_snapshot_classes.into_iter().collect(),
            csi_snapshot_timeout: self.csi_snapshot_timeout,
            snapshot_move_data: self.snapshot_move_data.then_some(true),
            default_volumes_to_fs_backup: self.default_volumes_to_fs_backup,
            ..Default::default()
        })
    }
}

/// Which objects: the filters Backup and Restore share.
#[derive(Debug, Args)]
pub struct Scope {
    /// Namespaces to include (default: all), comma-separated; `*` globs allowed.
    #[arg(long, value_delimiter = ',')]
    include_namespaces: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    exclude_namespaces: Vec<String>,
    /// Resources to include, as `resource` or `resource.group` (default: all).
    #[arg(long, value_delimiter = ',')]
    include_resources: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    exclude_resources: Vec<String>,
    /// Only objects with these labels (e.g. app=shop,tier!=cache).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Include cluster-scoped resources (default: what the namespaces need).
    #[arg(long)]
    include_cluster_resources: Option<bool>,
}

impl Scope {
    fn label_selector(&self) -> anyhow::Result<Option<LabelSelector>> {
        self.selector
            .as_deref()
            .map(|text| {
                parse_label_selector(text)
                    .map_err(|problem| anyhow::anyhow!("--selector {text:?}: {problem}"))
            })
            .transpose()
    }
}

/// Parses kubectl's selector syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`,
/// `!a`, comma-separated.
fn parse_label_selector(text: &str) -> Result<LabelSelector, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("a ')' without its '('".into());
        }
    }
    if depth != 0 {
        return Err("a '(' without its ')'".into());
    }
    terms.push(&text[start..]);
    let expression = |key: &str, operator: &str, values: Option<Vec<String>>| {
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("{key:?} is not a label key"));
        }
        Ok(LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values,
        })
    };
    let mut requirements = Vec::new();
    for term in terms.into_iter().map(str::trim) {
        let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
        let requirement = if let Some(key) = term.strip_prefix('!') {
            expression(key.trim(), "DoesNotExist", None)?
        } else if let Some((key, value)) = term.split_once("!=") {
            expression(key.trim(), "NotIn", Some(vec![value.trim().to_owned()]))?
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            expression(key.trim(), "In", Some(vec![value.trim().to_owned()]))?
        } else if let [key, rest] = words[..] {
            let rest = rest.trim();
            let (operator, list) = if let Some(list) = rest.strip_prefix("notin") {
                ("NotIn", list)
            } else if let Some(list) = rest.strip_prefix("in") {
                ("In", list)
            } else {
                return Err(format!(
                    "{term:?}: expected `in (...)` or `notin (...)` after the key"
                ));
            };
            let list = list
                .trim()
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .ok_or_else(|| format!("{term:?}: the values go in parentheses"))?;
            let values = list.split(',').map(|v| v.trim().to_owned()).collect();
            expression(key, operator, Some(values))?
        } else {
            expression(term, "Exists", None)?
        };
        requirements.push(requirement);
    }
    let selector = LabelSelector {
        match_expressions: Some(requirements),
        match_labels: None,
    };
    ferry_controller::resources::parse_selector(&selector)?;
    Ok(selector)
}

/// A unit enum's name as its JSON spells it.
fn enum_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Parses `--credential SECRET:KEY`.
fn parse_credential(text: Option<String>) -> anyhow::Result<Option<SecretKeyRef>> {
    let Some(text) = text else {
        return Ok(None);
    };
    match text.split_once(':') {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok(Some(SecretKeyRef {
            name: name.to_owned(),
            key: key.to_owned(),
        })),
        _ => bail!("--credential {text:?}: write SECRET:KEY, e.g. cloud-credentials:cloud"),
    }
}

fn block_on<F: Future<Output = anyhow::Result<ExitCode>>>(future: F) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}

fn exit_code(phase: Option<Phase>) -> ExitCode {
    match phase {
        Some(Phase::Completed) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// A Ferry resource as the commands show it: its name in messages, and its table.
trait Shown:
    Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Sized
{
    /// As the commands spell it: `backup`, `snapshot-location`.
    const NOUN: &str;
    const COLUMNS: Columns<Self>;
}

/// A Backup or a Restore, as `ferry <resource> create --wait` follows it.
trait Operated: Shown {
    /// Its phase and progress.
    fn state(&self) -> (Option<Phase>, Option<Progress>);
}

/// `ferry backup|restore create`: creates `object`, says how to follow it, and with `wait`
/// follows it to its end, printing it; the exit code says how it ended.
async fn create_and_follow<K: Operated>(
    global: &GlobalArgs,
    api: &Api<K>,
    object: &K,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let (noun, name) = (K::NOUN, object.name_any());
    create(api, object).await?;
    eprintln!("{noun} {name} created; `ferry {noun} describe {name}` shows how it goes");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let done = wait_for(api, &name).await?;
    print_objects(global, std::slice::from_ref(&done))?;
    Ok(exit_code(done.state().0))
}

async fn create<K: Shown>(api: &Api<K>, object: &K) -> anyhow::Result<()> {
    let what = K::NOUN;
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => bail!(
            "a {what} named {} already exists; pick another name",
            object.name_any()
        ),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the cluster does not know Ferry's resources: install them with `kubectl apply -k deploy/` ({})",
            status.message
        ),
        Err(error) => Err(error.into()),
    }
}

async fn get<K: Shown>(api: &Api<K>, name: &str) -> anyhow::Result<K> {
    let what = K::NOUN;
    api.get_opt(name)
        .await?
        .with_context(|| format!("no {what} named {name}; `ferry {what} get` lists them"))
}

/// `ferry <resource> get [NAME]`: one, or all of them oldest first, as a table or a document.
async fn show<K: Shown>(
    global: &GlobalArgs,
    api: &Api<K>,
    name: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let list = get_or_list(api, name).await?;
    print_objects(global, &list)?;
    Ok(ExitCode::SUCCESS)
}

async fn get_or_list<K: Shown>(api: &Api<K>, name: Option<&str>) -> anyhow::Result<Vec<K>> {
    let mut list = match name {
        Some(name) => vec![
            api.get_opt(name)
                .await?
                .with_context(|| format!("{name} not found"))?,
        ],
        None => api.list(&ListParams::default()).await?.items,
    };
    list.sort_by_key(|object| object.meta().creation_timestamp.clone());
    Ok(list)
}

/// Polls until the phase is final, with a progress bar for people.
async fn wait_for<K: Operated>(api: &Api<K>, name: &str) -> anyhow::Result<K> {
    let bar = indicatif::ProgressBar::new(0);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{elapsed_precise}] [{bar:30}] {pos}/{len} objects",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    loop {
        let object = get(api, name).await?;
        let (phase, progress) = object.state();
        if let Some(progress) = progress {
            bar.set_length(progress.items_total);
            bar.set_position(progress.items_done);
        }
        bar.set_message(format!("{name}: {}", phase_name(phase)));
        if matches!(
            phase,
            Some(
                Phase::Completed | Phase::PartiallyFailed | Phase::Failed | Phase::FailedValidation
            )
        ) {
            bar.finish_and_clear();
            return Ok(object);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn phase_name(phase: Option<Phase>) -> String {
    match phase {
        Some(phase) => enum_name(&phase),
        None => "New".to_owned(),
    }
}

/// Columns of a table and how one object fills them.
struct Columns<K> {
    header: &'static [&'static str],
    row: fn(&K) -> Vec<String>,
}

fn print_objects<K: Shown>(global: &GlobalArgs, objects: &[K]) -> anyhow::Result<()> {
    let columns = K::COLUMNS;
    match global.format() {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(objects)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&objects)?),
        OutputFormat::Text => {
            if objects.is_empty() {
                eprintln!("none found");
                return Ok(());
            }
            let mut table = comfy_table::Table::new();
            table.load_style(comfy_table::presets::NOTHING);
            table.set_header(columns.header);
            for object in objects {
                table.add_row((columns.row)(object));
            }
            println!("{table}");
        }
    }
    Ok(())
}

fn time(time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    time.map(|t| t.0.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The lines of a backup's or restore's log that tell of its hooks, if there are any.
fn print_hooks<'a>(lines: impl Iterator<Item = &'a str>) {
    let lines: Vec<&str> = lines.collect();
    if lines.is_empty() {
        return;
    }
    println!("\nHooks:");
    for line in lines {
        println!("  - {line}");
    }
}

fn describe<K: Serialize + ResourceExt>(global: &GlobalArgs, object: &K) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(object)?;
    if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.remove("managedFields");
    }
    match global.format() {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        _ => print!("{}", serde_saphyr::to_string(&value)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_selectors_parse() {
        let selector =
            parse_label_selector("app=shop, tier!=cache,env in (prod, staging),!legacy,owner")
                .unwrap();
        let got: Vec<(String, String, Option<Vec<String>>)> = selector
            .match_expressions
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.operator, r.values))
            .collect();
        let values = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            got,
            vec![
                ("app".into(), "In".into(), values(&["shop"])),
                ("tier".into(), "NotIn".into(), values(&["cache"])),
                ("env".into(), "In".into(), values(&["prod", "staging"])),
                ("legacy".into(), "DoesNotExist".into(), None),
                ("owner".into(), "Exists".into(), None),
            ]
        );
        for bad in ["a in (b", "a) in", "a between (b)", "a in b", "=b"] {
            assert!(parse_label_selector(bad).is_err(), "{bad} was accepted");
        }
    }
}
