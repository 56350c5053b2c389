//! `trellis state digest`: a state store's digest, entries and positions.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::state::StateStore;

#[derive(Subcommand)]
pub enum StateCommand {
    /// Print a state store's digest, entry count and input positions.
    Digest {
        /// The processor's state_dir.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs a `state` command.
///
/// # Errors
/// A store that cannot be opened (another process holds it).
pub fn run(command: StateCommand) -> anyhow::Result<ExitStatus> {
    match command {
        StateCommand::Digest { dir } => {
            if !dir.exists() {
                bail!("no state store at {}", dir.display());
            }
            let store = StateStore::open(&dir)?;
            println!("digest    {}", store.digest()?);
            println!("entries   {}", store.len());
            for (tp, offset) in store.positions()? {
                println!("position  {tp} {offset}");
            }
            Ok(ExitStatus::Success)
        }
    }
}
