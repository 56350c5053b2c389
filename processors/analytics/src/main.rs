//! `trellis-analytics`: see the library docs.

use std::process::ExitCode;

use clap::Parser;
use trellis_analytics::{Analytics, run};
use trellis_runtime::build::Build;
use trellis_runtime::lifecycle::{ProcessorArgs, serve_processor};

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
    serve_processor(&cli.processor, Analytics::SECRETS, run)
}
