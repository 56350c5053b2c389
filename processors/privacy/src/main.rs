//! `trellis-privacy`: see the library docs.

use std::process::ExitCode;

use clap::Subcommand;
use trellis_privacy::vault::Vault;
use trellis_privacy::{INDEX_KEY, MASTER_KEY, Privacy, SECRETS, Settings, run};
use trellis_runtime::lifecycle::{
    ExitStatus, ProcessorCli, init_tracing, report, secrets_or_exit, serve_processor,
};

const ABOUT: &str = "Pseudonymises, hashes and encrypts personal data from `collected` into `protected`, and keeps the key vault. (`--rebuild` replays the input positions; it never touches the vault.)";

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
    let cli = ProcessorCli::<Command>::parse_with_about(ABOUT);
    let Some(Command::Vault { command }) = cli.command else {
        return serve_processor::<Privacy, _>(&cli.processor, run);
    };
    let (config, secrets) = match (cli.processor.load::<Settings>(), secrets_or_exit(SECRETS)) {
        (Ok(config), Ok(secrets)) => (config, secrets),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    init_tracing(config.log_format);
    let mut vault = match Vault::open(
        &config.settings.vault_dir,
        secrets.get(MASTER_KEY).expose(),
        secrets.get(INDEX_KEY).expose(),
    ) {
        Ok(vault) => vault,
        Err(e) => return report(&e, ExitStatus::Misconfigured),
    };
    match command {
        VaultCommand::Rotate { tenant, reason } => match vault.rotate_tenant(&tenant, &reason) {
            Ok((retired, current, rewrapped)) => {
                println!(
                    "tenant {tenant}: KEK v{current} (retired {retired:?}), {rewrapped} subjects re-wrapped"
                );
                ExitCode::SUCCESS
            }
            Err(e) => report(&e, ExitStatus::Failure),
        },
        VaultCommand::Status => {
            for (tenant, subjects) in vault.subject_counts() {
                let version = vault.kek_version(&tenant).unwrap_or_default();
                println!("{tenant}: {subjects} subjects, KEK v{version}");
            }
            ExitCode::SUCCESS
        }
    }
}
