//! `trellis`: operate a Trellis topology. Thin dispatch: one module per
//! command under `cmd/`, over the runtime and the kit (`trellis-kit`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trellis_runtime::lifecycle::{ExitStatus, run_tool};

mod cmd;

use cmd::audit::AuditCommand;
use cmd::config::ConfigCommand;
use cmd::demo::DemoCommand;
use cmd::erasure::ErasureCommand;
use cmd::gdpr::GdprCommand;
use cmd::inspect::InspectArgs;
use cmd::registry::RegistryCommand;
use cmd::stack::StackCommand;
use cmd::state::StateCommand;
use cmd::topology::TopologyCommand;

/// Operate a Trellis topology: validate and provision it, serve the local
/// schema registry, generate demo data, inspect topics and state, verify
/// the audit logs and erasures. (Benchmarks: `trellis-bench`.)
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate or provision topology.yaml.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// What ops/ needs to know: the processors, their secrets, paths and
    /// metrics addresses (from topology.yaml, the processors and their configs).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The local stack's broker and Postgres, as ops/ starts them.
    #[command(subcommand)]
    Stack(StackCommand),
    /// The local Confluent-compatible schema registry.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Demo data: produce it, wait for the topology to take it in.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Summarise what every declared topic holds.
    Inspect(InspectArgs),
    /// Inspect a processor's state store (stop the processor first).
    #[command(subcommand)]
    State(StateCommand),
    /// Check the audited logs against their signed anchors; make and check
    /// proofs. Anchors are checked with `TRELLIS_AUDIT_SIGNING_KEY`.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// File data-subject requests (erasure, access) and read the answers.
    #[command(subcommand)]
    Gdpr(GdprCommand),
    /// Verify a completed erasure by replaying every retained log, and
    /// sign the evidence for an auditor.
    #[command(subcommand)]
    Erasure(ErasureCommand),
}

// Per-record parsing and encoding allocate many small short-lived objects;
// mimalloc handles that pattern markedly better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_tool(execute(cli.command))
}

async fn execute(command: Command) -> anyhow::Result<ExitStatus> {
    match command {
        Command::Topology(command) => cmd::topology::run(command).await,
        Command::Config(command) => cmd::config::run(command),
        Command::Stack(command) => cmd::stack::run(command),
        Command::Registry(command) => cmd::registry::run(command).await,
        Command::Demo(command) => cmd::demo::run(command).await,
        Command::Inspect(args) => cmd::inspect::run(args).await,
        Command::State(command) => cmd::state::run(command),
        Command::Audit(command) => cmd::audit::run(command).await,
        Command::Gdpr(command) => cmd::gdpr::run(command).await,
        Command::Erasure(command) => cmd::erasure::run(command).await,
    }
}
