//! `trellis-collector`: see the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use trellis_collector::{SECRETS, Settings, run};
use trellis_runtime::Config;
use trellis_runtime::lifecycle::{ExitStatus, init_tracing, report, shutdown_signal};
use trellis_runtime::secret::load_secrets;

/// Validates, normalises and deduplicates learning events from the ingest
/// topics into `collected`; rejects go to `dlq` with a reason code.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (YAML); `TRELLIS__*` variables override it.
    #[arg(long, env = "TRELLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Delete the state store and rebuild it by replaying the inputs.
    #[arg(long)]
    rebuild: bool,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&e, ExitStatus::Failure),
    };
    match runtime.block_on(run(config, secrets, shutdown_signal())) {
        Ok(exit) => ExitStatus::from(exit).into(),
        Err(e) => {
            let status = e.status();
            report(&e, status)
        }
    }
}
