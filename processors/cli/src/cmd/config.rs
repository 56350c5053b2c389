//! `trellis config …`: what ops/ needs to know about the topology and the
//! processors, answered from topology.yaml, the processors' own
//! declarations (`Build`) and their config files, so the scripts restate
//! none of it (as `vector validate` answers for Vector's configs).

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;
use trellis_kit::args::TopologyFile;
use trellis_kit::processors::{self, binaries};
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::secret::SecretFormat;
use trellis_runtime::topology::Topology;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// The processors topology.yaml declares that run as Trellis binaries
    /// (`trellis-<name>`), one per line, in pipeline order.
    Processors {
        #[command(flatten)]
        file: TopologyFile,
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
    },
    /// A processor's settings that are paths, as `TRELLIS__SETTINGS__<KEY>=
    /// <path under TRELLIS_HOME>` lines (its state directory first).
    Paths {
        /// The processor.
        processor: String,
    },
    /// A processor's `/metrics` URL, from its config file.
    Metrics {
        /// The processor.
        processor: String,
        /// Where the config files are (`<processor>.yaml`).
        #[arg(long, default_value = "ops/config", env = "TRELLIS_CONFIG_DIR")]
        config_dir: PathBuf,
    },
}

/// Runs a `config` command.
///
/// # Errors
/// topology.yaml, an unknown processor, a config without a metrics address.
pub fn run(command: ConfigCommand) -> anyhow::Result<ExitStatus> {
    match command {
        ConfigCommand::Processors { file } => {
            let topology = Topology::load(&file.topology)?;
            for name in processors::in_topology(&topology)? {
                println!("{name}");
            }
        }
        ConfigCommand::Secrets {
            processors,
            tools,
            hex32,
        } => {
            let mut specs = Vec::new();
            for binary in binaries() {
                if processors.is_empty() || processors.iter().any(|p| p == binary.name) {
                    specs.extend(binary.secrets.iter().copied());
                }
            }
            for name in &processors {
                processors::binary(name)?;
            }
            if tools {
                specs.push(trellis_kit::erasure::EVIDENCE_KEY);
            }
            let mut names: Vec<&str> = specs
                .iter()
                .filter(|s| !hex32 || s.format == SecretFormat::Hex32)
                .map(|s| s.env)
                .collect();
            names.sort_unstable();
            names.dedup();
            for name in names {
                println!("{name}");
            }
        }
        ConfigCommand::Paths { processor } => {
            let binary = processors::binary(&processor)?;
            println!("TRELLIS__STATE_DIR=state/{}", binary.name);
            for (key, path) in binary.paths {
                println!("TRELLIS__SETTINGS__{}={path}", key.to_ascii_uppercase());
            }
        }
        ConfigCommand::Metrics {
            processor,
            config_dir,
        } => {
            if processors::binary(&processor).is_err() {
                bail!("no processor binary named `{processor}`");
            }
            println!("{}", processors::metrics_url(&config_dir, &processor)?);
        }
    }
    Ok(ExitStatus::Success)
}
