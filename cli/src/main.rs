//! `ferry`: the one binary of Ferry. The CLI, the controller (`ferry controller`) and the node
//! agent (`ferry agent`) are subcommands, so that a user installs one image and one command.

mod agent_cmd;
mod cluster;
mod controller_cmd;
mod logging;
mod maintenance_cmd;
mod output;
mod probes;
mod repo_cmd;
mod volume_cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_mover::{Repository, S3Options};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Kubernetes-native backup, disaster recovery and migration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people: tables and sentences.
    #[value(alias = "table")]
    Text,
    Json,
    Yaml,
}

/// What every command takes, listed after the command's own options.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
struct CommonArgs {
    /// How results are printed on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Text, global = true)]
    output: OutputFormat,
    /// How the log (stderr) is written: text for people, JSON lines for a log pipeline.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value_t = logging::LogFormat::Text, global = true)]
    log_format: logging::LogFormat,
}

/// Where a repository is and how to open it: options of `ferry repo` and `ferry volume` only
/// (the cluster commands find their repositories through storage locations).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Repository options")]
pub struct RepoArgs {
    /// The repository: a local directory or s3://bucket/prefix.
    #[arg(long, env = "FERRY_REPO", global = true)]
    repo: Option<String>,
    /// S3 endpoint URL, for S3-compatible stores (MinIO, Ceph...).
    #[arg(long, env = "FERRY_S3_ENDPOINT", global = true)]
    s3_endpoint: Option<String>,
    #[arg(
        long,
        env = "FERRY_S3_REGION",
        default_value = "us-east-1",
        global = true
    )]
    s3_region: String,
    /// Address buckets as endpoint/bucket rather than bucket.endpoint.
    #[arg(long, env = "FERRY_S3_PATH_STYLE", global = true)]
    s3_path_style: bool,
    /// A PEM file of the only CAs the S3 endpoint's certificate may chain to (a private store).
    #[arg(long, env = "FERRY_S3_CA_BUNDLE", global = true)]
    s3_ca_bundle: Option<PathBuf>,
    /// Ask the store to encrypt what is written with its own keys too: AES256 (SSE-S3) or
    /// aws:kms (SSE-KMS, with --s3-kms-key-id or the bucket's default key).
    #[arg(long, env = "FERRY_S3_SERVER_SIDE_ENCRYPTION", global = true)]
    s3_server_side_encryption: Option<String>,
    /// The KMS key for --s3-server-side-encryption aws:kms.
    #[arg(long, env = "FERRY_S3_KMS_KEY_ID", global = true)]
    s3_kms_key_id: Option<String>,
    /// A file holding the repository password (else the FERRY_PASSWORD variable is used).
    #[arg(long, env = "FERRY_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    /// Seconds to wait for another process's conflicting lock before giving up.
    #[arg(long, default_value_t = 0, global = true)]
    retry_lock: u64,
}

/// What a command's code is given: the output format, and the repository options when the
/// command takes them.
#[derive(Debug)]
pub struct GlobalArgs {
    output: OutputFormat,
    repository: Option<RepoArgs>,
}

impl GlobalArgs {
    fn new(common: &CommonArgs, repository: Option<RepoArgs>) -> GlobalArgs {
        GlobalArgs {
            output: common.output,
            repository,
        }
    }

    fn repository(&self) -> &RepoArgs {
        self.repository
            .as_ref()
            .expect("only `ferry repo` and `ferry volume` open repositories, and they take the repository options")
    }

    pub fn format(&self) -> OutputFormat {
        self.output
    }

    pub fn lock_wait(&self) -> Duration {
        Duration::from_secs(self.repository().retry_lock)
    }

    pub fn backend(&self) -> anyhow::Result<Arc<dyn ferry_mover::Backend>> {
        let args = self.repository();
        let Some(repo) = &args.repo else {
            bail!("no repository given: pass --repo PATH|s3://bucket/prefix or set FERRY_REPO");
        };
        let ca_bundle = args
            .s3_ca_bundle
            .as_deref()
            .map(|path| read_ca_bundle("--s3-ca-bundle", path))
            .transpose()?;
        let server_side_encryption = ferry_mover::s3::ServerSideEncryption::from_settings(
            args.s3_server_side_encryption.as_deref(),
            args.s3_kms_key_id.as_deref(),
        )
        .map_err(|error| {
            anyhow::anyhow!("--s3-server-side-encryption, --s3-kms-key-id: {error}")
        })?;
        let options = S3Options {
            endpoint: args.s3_endpoint.clone(),
            region: args.s3_region.clone(),
            path_style: args.s3_path_style,
            ca_bundle,
            server_side_encryption,
            ..S3Options::default()
        };
        Ok(ferry_mover::open_backend(repo, &options)?)
    }

    pub fn password(&self) -> anyhow::Result<Vec<u8>> {
        read_password(
            self.repository().password_file.as_deref(),
            "FERRY_PASSWORD",
            "--password-file",
        )
    }

    pub fn open(&self) -> anyhow::Result<Arc<Repository>> {
        let repo = Repository::open(self.backend()?, &self.password()?)?;
        Ok(Arc::new(repo))
    }

    /// A progress bar only for people: text output on a terminal.
    pub fn show_progress(&self) -> bool {
        self.output == OutputFormat::Text && std::io::stderr().is_terminal()
    }
}

/// The PEM CA bundle in the file `path` given to `flag`, checked to hold a usable certificate.
pub fn read_ca_bundle(flag: &str, path: &std::path::Path) -> anyhow::Result<String> {
    let bundle = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    ferry_mover::s3::check_ca_bundle(&bundle)
        .map_err(|error| anyhow::anyhow!("{flag} {}: {error}", path.display()))?;
    Ok(bundle)
}

pub fn read_password(
    file: Option<&std::path::Path>,
    variable: &str,
    flag: &str,
) -> anyhow::Result<Vec<u8>> {
    if let Some(file) = file {
        let mut bytes = std::fs::read(file)
            .with_context(|| format!("reading the password file {}", file.display()))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            bail!("the password file {} is empty", file.display());
        }
        return Ok(bytes);
    }
    match std::env::var_os(variable) {
        Some(value) if !value.is_empty() => Ok(std::os::unix::ffi::OsStringExt::into_vec(value)),
        _ => bail!("no password given: set {variable} or pass {flag} FILE"),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and maintain repositories.
    Repo(RepoCli),
    /// Back up and restore a directory with Ferry's data mover, with no cluster.
    Volume(VolumeCli),
    /// Back up the objects of a cluster (a Backup resource the controller runs).
    #[command(subcommand)]
    Backup(cluster::BackupCommand),
    /// Restore a backup into this cluster.
    #[command(subcommand)]
    Restore(cluster::RestoreCommand),
    /// Take backups on a cron schedule.
    #[command(subcommand)]
    Schedule(cluster::ScheduleCommand),
    /// Storage locations: where backups go.
    #[command(subcommand)]
    Location(cluster::LocationCommand),
    /// Snapshot locations: where native volume snapshots are taken (EBS).
    #[command(subcommand)]
    SnapshotLocation(cluster::SnapshotLocationCommand),
    /// The installation's key, which reads every backup: keep it outside the cluster.
    #[command(subcommand)]
    Key(cluster::KeyCommand),
    /// Run the controller (in the cluster, as deploy/controller.yaml does).
    Controller(controller_cmd::ControllerArgs),
    /// Run the node agent (on every node, as deploy/agent.yaml does).
    Agent(agent_cmd::AgentArgs),
    /// Wait until a restore's node agent has filled this pod's volumes (a restored pod's init
    /// container).
    RestoreWait(agent_cmd::RestoreWaitArgs),
    /// Lend a block device to this node's agent over a Unix socket (the container of a data
    /// mover's or a restore's fill pod).
    #[command(hide = true)]
    LendDevice(agent_cmd::LendDeviceArgs),
}

#[derive(Debug, Args)]
struct RepoCli {
    #[command(subcommand)]
    command: repo_cmd::RepoCommand,
    #[command(flatten)]
    repository: RepoArgs,
}

#[derive(Debug, Args)]
struct VolumeCli {
    #[command(subcommand)]
    command: volume_cmd::VolumeCommand,
    #[command(flatten)]
    repository: RepoArgs,
}

/// A long-running controller logs what it does; a command run by hand only what went wrong.
fn default_log_level(cli: &Cli) -> &'static str {
    match cli.command {
        Command::Controller(_) | Command::Agent(_) => "info",
        _ => "warn",
    }
}

fn main() -> ExitCode {
    ferry_protocol::tls::install_crypto_provider();
    let cli = Cli::parse();
    logging::init(cli.common.log_format, default_log_level(&cli));
    let global = GlobalArgs::new(&cli.common, None);
    let result = match cli.command {
        Command::Repo(RepoCli {
            command,
            repository,
        }) => repo_cmd::run(
            &GlobalArgs::new(&cli.common, Some(repository)),
            &cli.cluster,
            command,
        ),
        Command::Volume(VolumeCli {
            command,
            repository,
        }) => volume_cmd::run(&GlobalArgs::new(&cli.common, Some(repository)), command),
        Command::Backup(command) => cluster::run_backup(&global, &cli.cluster, command),
        Command::Restore(command) => cluster::run_restore(&global, &cli.cluster, command),
        Command::Schedule(command) => cluster::run_schedule(&global, &cli.cluster, command),
        Command::Location(command) => cluster::run_location(&global, &cli.cluster, command),
        Command::SnapshotLocation(command) => {
            cluster::run_snapshot_location(&global, &cli.cluster, command)
        }
        Command::Key(command) => cluster::run_key(&cli.cluster, command),
        Command::Controller(args) => controller_cmd::run(args, &cli.cluster),
        Command::Agent(args) => agent_cmd::run(args, &cli.cluster),
        Command::RestoreWait(args) => agent_cmd::restore_wait(args),
        Command::LendDevice(args) => agent_cmd::lend_device(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
