//! `trellis inspect`: what every declared topic holds.

use std::time::Duration;

use clap::Args;
use trellis_kit::args::StackArgs;
use trellis_kit::inspect;
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::topology::Topology;

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// A topic is read until no record arrives for this long.
    #[arg(long, default_value_t = 1500)]
    idle_ms: u64,
}

/// Runs `inspect`.
///
/// # Errors
/// topology.yaml, the broker or the registry.
pub async fn run(args: InspectArgs) -> anyhow::Result<ExitStatus> {
    let topology = Topology::load(&args.stack.file.topology)?;
    let kafka = args.stack.broker.kafka();
    let reports = inspect::inspect(
        &kafka,
        &args.stack.registry.registry_url,
        &topology,
        Duration::from_millis(args.idle_ms),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    print!("{}", inspect::render(&reports));
    Ok(ExitStatus::Success)
}
