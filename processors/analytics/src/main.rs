//! `trellis-analytics`: see the library docs.

use std::process::ExitCode;

use clap::Parser;
use trellis_analytics::{Settings, run};
use trellis_runtime::lifecycle::{ProcessorArgs, serve, shutdown_signal};

/// Aggregates `protected` into tenant-tagged tumbling-window cells with
/// small-cell suppression, for warehouses.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    processor: ProcessorArgs,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    serve::<Settings, _>(&cli.processor, &[], |config, _| {
        run(config, shutdown_signal())
    })
}
