//! `trellis erasure verify|verify-report|public-key`: evidence that an
//! erasure is complete, signed for an auditor.

use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;
use trellis_kit::args::{AnchorKeys, StackArgs};
use trellis_records::SubjectId;
use trellis_runtime::lifecycle::ExitStatus;
use trellis_runtime::topology::Topology;

use super::gdpr::identifier;

#[derive(Subcommand)]
pub enum ErasureCommand {
    /// Replay every retained topic from offset 0, open the vault (and the
    /// progress state, the warehouse when given), check that nothing of the
    /// subject can be read or linked any more, and write a signed report
    /// (report.json, report.json.sig, report.txt). Exit 0 only if every
    /// check passes. Needs TRELLIS_VAULT_MASTER_KEY, TRELLIS_SUBJECT_INDEX_KEY,
    /// the audit log's public key (--public-key) and
    /// TRELLIS_EVIDENCE_SIGNING_KEY (or its _FILE); the privacy and progress
    /// processors stopped (or copies of their directories).
    Verify {
        #[command(flatten)]
        stack: Box<StackArgs>,
        #[command(flatten)]
        key: AnchorKeys,
        /// The erasure request to verify.
        #[arg(long)]
        request: String,
        /// An identifier of the subject, `kind:id` (repeatable; needed once
        /// the request record has expired from its topic).
        #[arg(long = "identifier", value_parser = identifier)]
        identifiers: Vec<SubjectId>,
        /// The privacy processor's vault directory.
        #[arg(long)]
        vault_dir: PathBuf,
        /// The progress projector's state directory.
        #[arg(long)]
        progress_state: Option<PathBuf>,
        /// Check the warehouse too (TRELLIS_WAREHOUSE_URL[_FILE]).
        #[arg(long)]
        warehouse: bool,
        /// Check the audit chain against this exported log (`trellis audit
        /// export-log`) instead of the broker.
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Where the report goes.
        #[arg(long, default_value = "erasure-report")]
        out: PathBuf,
    },
    /// Check a report against its signature with the signer's public key
    /// alone: what an auditor runs.
    VerifyReport {
        /// The report (report.json).
        #[arg(long)]
        report: PathBuf,
        /// Its signature (default: the report's path + `.sig`).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The signer's Ed25519 public key, hex.
        #[arg(long, env = "TRELLIS_EVIDENCE_PUBLIC_KEY")]
        public_key: String,
    },
    /// Print the public key of TRELLIS_EVIDENCE_SIGNING_KEY (give it to auditors).
    PublicKey,
}

/// Runs an `erasure` command.
///
/// # Errors
/// A missing secret, the broker, the vault.
pub async fn run(command: ErasureCommand) -> anyhow::Result<ExitStatus> {
    use trellis_kit::erasure as e;
    match command {
        ErasureCommand::Verify {
            stack,
            key,
            request,
            identifiers,
            vault_dir,
            progress_state,
            warehouse,
            audit_log,
            out,
        } => {
            // Every secret first: a missing one must not cost a replay.
            let signing = e::signing_key()?;
            let anchor_keys = key.keys()?;
            let warehouse = if warehouse {
                Some(e::warehouse_from_env()?)
            } else {
                None
            };
            let identifiers = identifiers.into_iter().map(|i| (i.kind, i.id)).collect();
            let topology = Topology::load_checked(&stack.file.topology)?;
            let kafka = stack.broker.kafka();
            let started = Instant::now();
            let report = e::verify(e::Inputs {
                kafka: &kafka,
                registry_url: &stack.registry.registry_url,
                topology: &topology,
                request_id: &request,
                identifiers,
                vault_dir: &vault_dir,
                progress_state: progress_state.as_deref(),
                warehouse,
                audit: &anchor_keys,
                audit_log: audit_log.as_deref(),
                progress_bars: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .await?;
            let path = e::write_signed(&report, &signing, &out)?;
            print!("{}", e::summary(&report));
            println!(
                "verified in {:.1}s; signed report: {} (public key {})",
                started.elapsed().as_secs_f64(),
                path.display(),
                hex::encode(signing.verifying_key().as_bytes())
            );
            Ok(if report.verdict == "passed" {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
        ErasureCommand::VerifyReport {
            report,
            signature,
            public_key,
        } => {
            let signature = signature.unwrap_or_else(|| {
                let mut s = report.clone().into_os_string();
                s.push(".sig");
                PathBuf::from(s)
            });
            let checked = e::verify_signed(&report, &signature, &public_key)?;
            println!("signature valid: the report is as its signer wrote it");
            print!("{}", e::summary(&checked));
            Ok(if checked.verdict == "passed" {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
        ErasureCommand::PublicKey => {
            println!(
                "{}",
                hex::encode(e::signing_key()?.verifying_key().as_bytes())
            );
            Ok(ExitStatus::Success)
        }
    }
}
