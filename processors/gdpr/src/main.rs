//! `trellis-gdpr`: see the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use trellis_gdpr::{Settings, run};
use trellis_runtime::Config;
use trellis_runtime::lifecycle::{
    ExitStatus, block_on_processor, init_tracing, report, shutdown_signal,
};

/// Runs data-subject requests (erasure, access) as a saga over the
/// participants and answers on `gdpr.subject_request.acknowledged.v1`.
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
    block_on_processor(run(config, shutdown_signal()))
}
