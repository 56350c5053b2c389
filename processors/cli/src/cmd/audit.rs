//! `trellis audit …`: check the audited logs against their signed anchors,
//! make and check proofs, run a witness.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use trellis_kit::args::{AnchorKeys, Broker, TopologyFile};
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::topology::Topology;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Re-read every audited topic, recompute every root, check every
    /// anchor chain; report the first disagreement per partition and exit 1
    /// if there is any.
    Verify {
        #[command(flatten)]
        file: TopologyFile,
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        key: AnchorKeys,
        /// Check a log file written by `export-log` instead of the broker.
        #[arg(long)]
        log: Option<PathBuf>,
        /// A witness's cosigned checkpoint (its state file, or an http://
        /// URL): detects a log cut short or rewritten after the witness saw it.
        #[arg(long, requires = "witness_key")]
        witness: Option<String>,
        /// The witness's verifier key (cosignature type, `trellis audit
        /// witness-key` prints it).
        #[arg(long, requires = "witness")]
        witness_key: Option<String>,
    },
    /// Print the audit log's public verifier key, from the signing key in
    /// TRELLIS_AUDIT_SIGNING_KEY[_FILE]: give it to verifiers and witnesses.
    PublicKey {
        /// The key's name (the audit processor's `settings.key_id`).
        #[arg(long, default_value = "anchors-local-1", env = "TRELLIS_AUDIT_KEY_ID")]
        key_name: String,
    },
    /// Print a witness's public verifier key, from its signing key in
    /// TRELLIS_WITNESS_SIGNING_KEY[_FILE].
    WitnessKey {
        /// The witness's name (a schema-less URL naming it).
        #[arg(long, default_value = "witness.localhost/trellis")]
        name: String,
    },
    /// Run a witness: fetch the log's checkpoint, check it extends the last
    /// one cosigned (consistency proof), cosign it (C2SP tlog-cosignature)
    /// and keep it in the state file. Signs with TRELLIS_WITNESS_SIGNING_KEY.
    Witness {
        /// The audit processor's checkpoint endpoint (serves /checkpoint).
        #[arg(long, default_value = "http://127.0.0.1:9115")]
        log: String,
        /// The log's public verifier key.
        #[arg(
            long = "log-key",
            env = "TRELLIS_AUDIT_PUBLIC_KEY",
            value_delimiter = ',',
            required = true
        )]
        log_keys: Vec<String>,
        /// The witness's name.
        #[arg(long, default_value = "witness.localhost/trellis")]
        name: String,
        /// Where the last cosigned checkpoint is kept (and read at start).
        #[arg(long)]
        state: PathBuf,
        /// How often to fetch.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Fetch once and exit (status 1 if the checkpoint was refused).
        #[arg(long)]
        once: bool,
    },
    /// Copy every audited topic and the anchors into one log file.
    ExportLog {
        #[command(flatten)]
        file: TopologyFile,
        #[command(flatten)]
        broker: Broker,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Prove that a record is covered by an anchor (`--offset`), or that a
    /// later anchor extends an earlier one (`--from`, `--to`).
    Prove {
        #[command(flatten)]
        broker: Broker,
        /// Audited topic.
        #[arg(long)]
        topic: String,
        /// Partition.
        #[arg(long)]
        partition: i32,
        /// The record's offset (inclusion proof).
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        offset: Option<i64>,
        /// The anchor to prove against (default: the first covering it).
        #[arg(long, requires = "offset")]
        anchor: Option<i64>,
        /// Earlier anchor's sequence (consistency proof).
        #[arg(long, requires = "to")]
        from: Option<i64>,
        /// Later anchor's sequence.
        #[arg(long, requires = "from")]
        to: Option<i64>,
        /// Write the proof here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof using only the proof and the anchors (from the broker
    /// or a log file); signatures too when the signing key is set.
    VerifyProof {
        /// The proof (JSON from `prove`).
        #[arg(long)]
        proof: PathBuf,
        #[command(flatten)]
        broker: Broker,
        #[command(flatten)]
        key: AnchorKeys,
        /// Read the anchors from a log file instead of the broker.
        #[arg(long)]
        log: Option<PathBuf>,
    },
}

/// Runs an `audit` command.
///
/// # Errors
/// topology.yaml, the broker, keys that do not parse.
pub async fn run(command: AuditCommand) -> anyhow::Result<ExitStatus> {
    use trellis_kit::audit::{self as a, ProofRequest, Source};
    let mut command = command;
    match &mut command {
        AuditCommand::Witness {
            log,
            log_keys,
            name,
            state,
            interval_ms,
            once,
        } => {
            let clean = a::witness(a::WitnessOptions {
                log_url: log.trim_end_matches('/').to_string(),
                log_keys: a::keys(log_keys, None)?,
                cosigner: a::witness_signer(name)?,
                state: state.clone(),
                interval: Duration::from_millis(*interval_ms),
                once: *once,
            })
            .await?;
            return Ok(if clean {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            });
        }
        // Read before the blocking section: the witness's note may be a URL.
        AuditCommand::Verify {
            witness: Some(at), ..
        } => {
            let note = a::read_witness_checkpoint(at).await?;
            *at = String::from_utf8(note).context("the witness's checkpoint is not text")?;
        }
        _ => {}
    }
    // The audit commands read whole logs with blocking clients.
    tokio::task::spawn_blocking(move || match command {
        AuditCommand::Verify {
            file,
            broker,
            key,
            log,
            witness,
            witness_key,
        } => {
            let topology = Topology::load_checked(&file.topology)?;
            let keys = key.keys()?;
            let witness = match (witness, witness_key) {
                (Some(note), Some(key)) => Some((
                    note,
                    a::cosignature_verifier(&key).context("--witness-key")?,
                )),
                _ => None,
            };
            let kafka = broker.kafka();
            let source = match &log {
                Some(path) => Source::File(path),
                None => Source::Broker(&kafka),
            };
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let view = witness.as_ref().map(|(note, key)| a::WitnessView {
                note: note.as_bytes(),
                key,
            });
            let (reports, log) = a::verify(source, &topology, &keys, view, progress)?;
            Ok(
                if reports.iter().any(|r| r.finding.is_some()) || log.problem.is_some() {
                    ExitStatus::Failure
                } else {
                    ExitStatus::Success
                },
            )
        }
        AuditCommand::PublicKey { key_name } => {
            println!("{}", a::public_key(&key_name)?);
            Ok(ExitStatus::Success)
        }
        AuditCommand::WitnessKey { name } => {
            println!("{}", a::witness_signer(&name)?.vkey());
            Ok(ExitStatus::Success)
        }
        AuditCommand::Witness { .. } => unreachable!("run before the blocking section"),
        AuditCommand::ExportLog { file, broker, out } => {
            let topology = Topology::load_checked(&file.topology)?;
            let kafka = broker.kafka();
            let n = a::export_log(&kafka, &topology, &out)?;
            println!("{n} records written to {}", out.display());
            Ok(ExitStatus::Success)
        }
        AuditCommand::Prove {
            broker,
            topic,
            partition,
            offset,
            anchor,
            from,
            to,
            out,
        } => {
            let kafka = broker.kafka();
            let request = match (offset, from, to) {
                (Some(offset), _, _) => ProofRequest::Inclusion { offset, anchor },
                (None, Some(from), Some(to)) => ProofRequest::Consistency { from, to },
                _ => bail!("give --offset, or --from and --to"),
            };
            let proof = a::prove(&kafka, &topic, partition, request)?;
            a::write_proof(&proof, out.as_ref())?;
            Ok(ExitStatus::Success)
        }
        AuditCommand::VerifyProof {
            proof,
            broker,
            key,
            log,
        } => {
            let kafka = broker.kafka();
            let keys = key.keys()?;
            let source = match &log {
                Some(path) => Source::File(path),
                None => Source::Broker(&kafka),
            };
            match a::check_proof(&proof, source, Some(&keys)) {
                Ok(message) => {
                    println!("valid: {message}");
                    Ok(ExitStatus::Success)
                }
                Err(e) => {
                    println!("INVALID: {e:#}");
                    Ok(ExitStatus::Failure)
                }
            }
        }
    })
    .await?
}
