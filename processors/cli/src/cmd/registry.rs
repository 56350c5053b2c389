//! `trellis registry serve`: the Confluent REST subset for the local stack.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use trellis_runtime::lifecycle::{ExitStatus, shutdown_signal};

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry until SIGTERM/SIGINT.
    Serve {
        /// Where schemas and ids persist.
        #[arg(long)]
        data_dir: PathBuf,
        /// Listen address (loopback by default).
        #[arg(long, default_value = "127.0.0.1:8081")]
        addr: SocketAddr,
    },
}

/// Runs a `registry` command.
///
/// # Errors
/// The registry's store or address.
pub async fn run(command: RegistryCommand) -> anyhow::Result<ExitStatus> {
    match command {
        RegistryCommand::Serve { data_dir, addr } => {
            trellis_kit::registry::serve(
                &data_dir,
                addr,
                |bound| tracing::info!(%bound, "schema registry listening"),
                shutdown_signal(),
            )
            .await
            .with_context(|| format!("serving the registry from {}", data_dir.display()))?;
            Ok(ExitStatus::Success)
        }
    }
}
