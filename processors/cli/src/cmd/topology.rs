//! `trellis topology check|apply`: every problem in topology.yaml at once;
//! topics created and schemas registered.

use clap::Subcommand;
use trellis_kit::args::{StackArgs, TopologyFile};
use trellis_kit::provision;
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::topology::Topology;

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Print every problem in topology.yaml and its schemas; exit 1 if any.
    Check(TopologyFile),
    /// Create missing topics and register schemas (BACKWARD). Idempotent.
    Apply {
        #[command(flatten)]
        stack: StackArgs,
        /// Replication factor for new topics.
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

/// Runs a `topology` command.
///
/// # Errors
/// topology.yaml, the broker or the registry.
pub async fn run(command: TopologyCommand) -> anyhow::Result<ExitStatus> {
    match command {
        TopologyCommand::Check(file) => {
            let topology = Topology::load(&file.topology)?;
            match topology.check() {
                Ok(()) => {
                    println!(
                        "{}: {} topics, {} processors, no problems",
                        file.topology.display(),
                        topology.topics.len(),
                        topology.processors.len()
                    );
                    Ok(ExitStatus::Success)
                }
                Err(problems) => {
                    println!("{}: {} problem(s)", file.topology.display(), problems.len());
                    for problem in problems {
                        println!("  - {problem}");
                    }
                    Ok(ExitStatus::Failure)
                }
            }
        }
        TopologyCommand::Apply { stack, replication } => {
            let StackArgs {
                file,
                broker,
                registry,
            } = stack;
            let topology = Topology::load_checked(&file.topology)?;
            let kafka = broker.kafka();
            let applied = provision::apply(&kafka, &registry.registry_url, &topology, replication)
                .await
                .map_err(anyhow::Error::msg)?;
            for (topic, outcome) in &applied.topics {
                println!("topic   {topic:<40} {outcome:?}");
            }
            for (subject, id) in &applied.schemas {
                println!("schema  {subject:<40} id {id}");
            }
            let drifted = applied
                .topics
                .values()
                .any(|o| matches!(o, trellis_runtime::kafka::TopicOutcome::Drifted { .. }));
            Ok(if drifted {
                ExitStatus::Failure
            } else {
                ExitStatus::Success
            })
        }
    }
}
