//! `trellis-privacy`: see the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trellis_privacy::vault::Vault;
use trellis_privacy::{INDEX_KEY, MASTER_KEY, SECRETS, Settings, run};
use trellis_runtime::Config;
use trellis_runtime::lifecycle::{
    ExitStatus, block_on_processor, init_tracing, report, shutdown_signal,
};
use trellis_runtime::secret::load_secrets;

/// Pseudonymises, hashes and encrypts personal data from `collected` into
/// `protected`, and keeps the key vault.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (YAML); `TRELLIS__*` variables override it.
    #[arg(long, env = "TRELLIS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Delete the state store (input positions; not the vault) and rebuild
    /// it by replaying the inputs.
    #[arg(long)]
    rebuild: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Key vault maintenance (with the processor stopped: the vault is
    /// opened by one process at a time).
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Rotate a tenant's key-encryption key: re-wraps every subject of the
    /// tenant and destroys the old KEK. Older records stay readable.
    Rotate {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Why (recorded with the new KEK).
        #[arg(long, default_value = "scheduled")]
        reason: String,
    },
    /// Subjects held per tenant and each tenant's KEK version.
    Status,
}

// Per-record parsing and encoding allocate many small short-lived objects;
// mimalloc handles that pattern markedly better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::<Settings>::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return report(&e, ExitStatus::Misconfigured),
    };
    config.rebuild |= cli.rebuild;
    init_tracing(config.log_format);
    let secrets = match load_secrets(SECRETS) {
        Ok(secrets) => secrets,
        Err(e) => return report(&e, ExitStatus::Misconfigured),
    };
    if let Some(Command::Vault { command }) = cli.command {
        let mut vault = match Vault::open(
            &config.settings.vault_dir,
            secrets.get(MASTER_KEY).expose(),
            secrets.get(INDEX_KEY).expose(),
        ) {
            Ok(vault) => vault,
            Err(e) => return report(&e, ExitStatus::Misconfigured),
        };
        return match command {
            VaultCommand::Rotate { tenant, reason } => {
                match vault.rotate_tenant(&tenant, &reason) {
                    Ok((retired, current, rewrapped)) => {
                        println!(
                            "tenant {tenant}: KEK v{current} (retired {retired:?}), {rewrapped} subjects re-wrapped"
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => report(&e, ExitStatus::Failure),
                }
            }
            VaultCommand::Status => {
                for (tenant, subjects) in vault.subject_counts() {
                    let version = vault.kek_version(&tenant).unwrap_or_default();
                    println!("{tenant}: {subjects} subjects, KEK v{version}");
                }
                ExitCode::SUCCESS
            }
        };
    }
    block_on_processor(run(config, secrets, shutdown_signal()))
}
