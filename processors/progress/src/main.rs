//! `trellis-progress`: see the library docs.

use std::process::ExitCode;

use clap::Subcommand;
use sha2::{Digest, Sha256};
use trellis_progress::transcript::Transcript;
use trellis_progress::{Progress, run};
use trellis_runtime::lifecycle::{ExitStatus, ProcessorCli, serve_processor};

const ABOUT: &str =
    "Projects learner × activity progress, derived completions and transcripts from `protected`.";

#[derive(Subcommand)]
enum Command {
    /// Print a learner's transcript from a running projector's read path.
    Transcript {
        /// The transcript endpoint, e.g. http://127.0.0.1:9203.
        #[arg(long)]
        url: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// The learner's pseudonym.
        #[arg(long)]
        learner: String,
        /// Bearer token (operator of the tenant, or the learner).
        #[arg(long, env = "TRELLIS_TRANSCRIPT_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Make a new principal token: prints the token (once) and the hash to
    /// put in `settings.transcripts.principals`.
    NewToken,
}

fn transcript(url: &str, tenant: &str, learner: &str, token: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let response = runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!(
                "{}/v1/transcripts/{tenant}/{learner}",
                url.trim_end_matches('/')
            ))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        serde_json::from_str::<Transcript>(&body).map_err(|e| format!("unexpected answer: {e}"))
    })?;
    println!(
        "{} / {}: {} completed",
        response.tenant_id,
        response.learner,
        response.entries.len()
    );
    for entry in response.entries {
        println!(
            "  {}  {}{}  evidence: {}",
            entry.completed_at,
            entry.activity_id,
            entry
                .score_scaled
                .map(|s| format!("  score {s:.2}"))
                .unwrap_or_default(),
            entry.evidence_event_ids.join(", ")
        );
    }
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = ProcessorCli::<Command>::parse_with_about(ABOUT);
    match cli.command {
        Some(Command::Transcript {
            url,
            tenant,
            learner,
            token,
        }) => {
            return match transcript(&url, &tenant, &learner, &token) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitStatus::Failure.into()
                }
            };
        }
        Some(Command::NewToken) => {
            let token = format!("trt_{}", hex::encode(rand::random::<[u8; 16]>()));
            println!("token:        {token}    (shown once)");
            println!(
                "token_sha256: {}",
                hex::encode(Sha256::digest(token.as_bytes()))
            );
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    serve_processor::<Progress, _>(&cli.processor, run)
}
