//! `trellis-audit`: see the library docs. Verification and proofs are
//! `trellis audit …`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use trellis_audit::{SECRETS, Settings, run};
use trellis_runtime::Config;
use trellis_runtime::lifecycle::{
    ExitStatus, block_on_processor, init_tracing, report, shutdown_signal,
};
use trellis_runtime::secret::load_secrets;

/// Keeps RFC 6962 Merkle trees over every audited topic and anchors them
/// in signed, hash-chained records on `audit.anchors`.
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
    block_on_processor(run(config, secrets, shutdown_signal()))
}
