//! `ferry`: the one binary of Ferry. The CLI, the controller (`ferry controller`) and the node
//! agent (`ferry agent`) are subcommands, so that a user installs one image and one command.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Kubernetes-native backup, disaster recovery and migration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up and restore a directory with Ferry's data mover, with no cluster.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Back up a directory into a repository.
    Backup,
    /// Restore a snapshot into a directory.
    Restore,
}

fn main() -> anyhow::Result<()> {
    ferry_protocol::tls::install_crypto_provider();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Volume(_) => {
            anyhow::bail!("the data mover is not yet available in this build of ferry (issue 3)")
        }
    }
}
