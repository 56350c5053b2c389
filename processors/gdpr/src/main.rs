//! `trellis-gdpr`: see the library docs.

use std::process::ExitCode;

use clap::Parser;
use trellis_gdpr::{Gdpr, run};
use trellis_runtime::build::Build;
use trellis_runtime::lifecycle::{ProcessorArgs, serve_processor};

/// Runs data-subject requests (erasure, access) as a saga over the
/// participants and answers on `gdpr.subject_request.acknowledged.v1`.
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
    serve_processor(&cli.processor, Gdpr::SECRETS, run)
}
