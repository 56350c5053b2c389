//! `trellis-audit`: see the library docs. Verification and proofs are
//! `trellis audit …`.

use std::process::ExitCode;

use clap::Parser;
use trellis_audit::{SECRETS, run};
use trellis_runtime::lifecycle::{ProcessorArgs, serve_processor};

/// Keeps RFC 6962 Merkle trees over every audited topic and anchors them
/// in signed, hash-chained records on `audit.anchors`.
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
    serve_processor(&cli.processor, SECRETS, run)
}
