//! `trellis gdpr request`: file a data-subject request, print the answer.

use std::time::{Duration, Instant};

use clap::Subcommand;
use trellis_kit::args::StackArgs;
use trellis_records::SubjectId;
use trellis_runtime::lifecycle::ExitStatus;

#[derive(Subcommand)]
pub enum GdprCommand {
    /// File a request and print the saga's answer.
    Request {
        #[command(flatten)]
        stack: StackArgs,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// `erasure` or `access`.
        #[arg(long, default_value = "erasure")]
        kind: String,
        /// `user_id`, `mbox`, `account`, …
        #[arg(long, default_value = "user_id")]
        subject_kind: String,
        /// The identifier as the source system knows it.
        #[arg(long)]
        subject_id: String,
        /// Another identifier of the same person, `kind:id` (repeatable),
        /// e.g. `account:https://moodle.example|1014`,
        /// `mbox:mailto:ann@example.org`: one request covers them all.
        #[arg(long = "also", value_parser = identifier)]
        also: Vec<SubjectId>,
        /// Request id (default: a new UUID).
        #[arg(long)]
        request_id: Option<String>,
        /// Give up waiting for the answer after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

/// `kind:id` as an identifier (the id may hold colons: `mbox:mailto:…`).
pub fn identifier(text: &str) -> Result<SubjectId, String> {
    text.split_once(':')
        .filter(|(kind, id)| !kind.is_empty() && !id.is_empty())
        .map(|(kind, id)| SubjectId {
            kind: kind.into(),
            id: id.into(),
        })
        .ok_or_else(|| {
            format!("`{text}` is not kind:id (e.g. user_id:1014, account:https://lms.example|1014)")
        })
}

/// Runs a `gdpr` command.
///
/// # Errors
/// The stack, or no answer in time.
pub async fn run(command: GdprCommand) -> anyhow::Result<ExitStatus> {
    match command {
        GdprCommand::Request {
            stack,
            tenant,
            kind,
            subject_kind,
            subject_id,
            also,
            request_id,
            timeout_secs,
        } => {
            let (_, requests) = stack.requests().await?;
            let request = trellis_records::SubjectRequest {
                request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                tenant_id: tenant,
                kind,
                subject_id_kind: subject_kind,
                subject_id,
                requested_at: trellis_runtime::ticker::now_ms(),
                other_subject_ids: also,
            };
            let filed = Instant::now();
            requests.file(&request).await?;
            let answer = requests
                .wait_for(&request.request_id, Duration::from_secs(timeout_secs))
                .await?;
            print!(
                "{}",
                trellis_kit::gdpr::render(&answer, Some(filed.elapsed()))
            );
            Ok(if answer.status == "completed" {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            })
        }
    }
}
