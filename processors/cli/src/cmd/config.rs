//! `trellis config …`: what ops/ needs to know about the topology and the
//! processors, answered from topology.yaml, the processor binaries' own
//! descriptions (`trellis-<name> --describe`) and their config files, so
//! the scripts restate none of it (as `vector validate` answers for
//! Vector's configs).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use trellis_kit::args::TopologyFile;
use trellis_kit::processors;
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::secret::SecretFormat;
use trellis_runtime::topology::Topology;

/// Where the answers come from.
#[derive(Args)]
pub struct From {
    #[command(flatten)]
    file: TopologyFile,
    /// Where the `trellis-<processor>` binaries are (default: beside this one).
    #[arg(long, env = "TRELLIS_BIN_DIR")]
    bin_dir: Option<PathBuf>,
}

impl From {
    fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(processors::bin_dir)
    }
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// The processors topology.yaml declares that run as Trellis binaries
    /// (`trellis-<name>`), one per line, in the file's order; each binary
    /// is asked to describe itself, so a missing one is named.
    Processors {
        #[command(flatten)]
        from: From,
    },
    /// The secrets' variable names: of the processors given (default:
    /// all), with `--tools` also those of `trellis` itself (erasure
    /// reports), with `--hex32` only those that are 32 random bytes (the
    /// local stack generates those).
    Secrets {
        /// Processors (default: every one).
        processors: Vec<String>,
        /// Also the tools' secrets.
        #[arg(long)]
        tools: bool,
        /// Only secrets of 32 bytes in hex.
        #[arg(long)]
        hex32: bool,
        #[command(flatten)]
        from: From,
    },
    /// A processor's settings that are paths, as `TRELLIS__STATE_DIR=…`
    /// then `TRELLIS__SETTINGS__<KEY>=<path under TRELLIS_HOME>` lines.
    Paths {
        /// The processor.
        processor: String,
        #[command(flatten)]
        from: From,
    },
    /// A processor's `/metrics` URL, from its config file.
    Metrics {
        /// The processor.
        processor: String,
        /// Where the config files are (`<processor>.yaml`).
        #[arg(long, default_value = "ops/config", env = "TRELLIS_CONFIG_DIR")]
        config_dir: PathBuf,
        #[command(flatten)]
        file: TopologyFile,
    },
}

/// `name` if topology.yaml runs it as a Trellis processor.
fn declared(topology: &Topology, name: &str) -> anyhow::Result<()> {
    if processors::in_topology(topology).contains(&name) {
        return Ok(());
    }
    bail!(
        "topology.yaml runs no processor named `{name}` (it runs: {})",
        processors::in_topology(topology).join(", ")
    )
}

/// Runs a `config` command.
///
/// # Errors
/// topology.yaml, an unknown processor or one without a binary, a config
/// without a metrics address.
pub fn run(command: ConfigCommand) -> anyhow::Result<ExitStatus> {
    match command {
        ConfigCommand::Processors { from } => {
            let topology = Topology::load(&from.file.topology)?;
            for description in processors::describe_all(&from.bin_dir(), &topology)? {
                println!("{}", description.name);
            }
        }
        ConfigCommand::Secrets {
            processors: names,
            tools,
            hex32,
            from,
        } => {
            let topology = Topology::load(&from.file.topology)?;
            for name in &names {
                declared(&topology, name)?;
            }
            let mut secrets = Vec::new();
            for description in processors::describe_all(&from.bin_dir(), &topology)? {
                if names.is_empty() || names.contains(&description.name) {
                    secrets.extend(
                        description
                            .secrets
                            .into_iter()
                            .filter(|s| !hex32 || s.hex32)
                            .map(|s| s.env),
                    );
                }
            }
            let evidence = trellis_kit::erasure::EVIDENCE_KEY;
            if tools && (!hex32 || evidence.format == SecretFormat::Hex32) {
                secrets.push(evidence.env.to_string());
            }
            secrets.sort_unstable();
            secrets.dedup();
            for name in secrets {
                println!("{name}");
            }
        }
        ConfigCommand::Paths { processor, from } => {
            let topology = Topology::load(&from.file.topology)?;
            declared(&topology, &processor)?;
            let description = processors::describe(&from.bin_dir(), &processor)?;
            println!("TRELLIS__STATE_DIR=state/{}", description.name);
            for (key, path) in description.paths {
                println!("TRELLIS__SETTINGS__{}={path}", key.to_ascii_uppercase());
            }
        }
        ConfigCommand::Metrics {
            processor,
            config_dir,
            file,
        } => {
            declared(&Topology::load(&file.topology)?, &processor)?;
            println!("{}", processors::metrics_url(&config_dir, &processor)?);
        }
    }
    Ok(ExitStatus::Success)
}
