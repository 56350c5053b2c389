//! `trellis-collector`: see the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trellis_collector::apikeys::{KeyStore, SCOPE_EVENTS_WRITE, signing_secret};
use trellis_collector::validate::valid_tenant;
use trellis_collector::{SECRETS, Settings, run};
use trellis_runtime::Config;
use trellis_runtime::lifecycle::{
    ExitStatus, block_on_processor, init_tracing, report, shutdown_signal,
};
use trellis_runtime::secret::load_secrets;

/// Validates, normalises and deduplicates learning events from the ingest
/// topics into `collected`; rejects go to `dlq` with a reason code.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (YAML); `TRELLIS__*` variables override it.
    #[arg(long, env = "TRELLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Delete the state store and rebuild it by replaying the inputs.
    #[arg(long)]
    rebuild: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Manage HTTP ingest API keys (the store named by `settings.http.api_keys`).
    /// Changes take effect on the next request, without a restart.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key; prints it (and its signing secret) once. Only hashes are stored.
    Create {
        /// The one tenant the key may write for.
        #[arg(long)]
        tenant: String,
        /// Scopes (repeatable).
        #[arg(long = "scope", default_value = SCOPE_EVENTS_WRITE)]
        scopes: Vec<String>,
        /// Expire after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Require HMAC-signed requests (server-to-server producers).
        #[arg(long)]
        signed: bool,
        /// A label for operators.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List keys (ids, tenants, scopes, state; never keys).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key's id, as `list` shows it.
        #[arg(long)]
        id: String,
    },
}

fn api_key(config: &Config<Settings>, command: ApiKeyCommand) -> Result<(), String> {
    let http = config
        .settings
        .http
        .as_ref()
        .ok_or("the configuration has no `settings.http` section, so no API key store")?;
    let store = KeyStore::new(&http.api_keys);
    match command {
        ApiKeyCommand::Create {
            tenant,
            scopes,
            expires_in_days,
            signed,
            label,
        } => {
            if !valid_tenant(&tenant) {
                return Err(format!("`{tenant}` is not a valid tenant id"));
            }
            let master = if signed {
                Some(load_secrets(SECRETS).map_err(|e| e.to_string())?)
            } else {
                None
            };
            let expires_at = expires_in_days.map(|days| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                now + i64::from(days) * 86_400_000
            });
            let (key, record) = store
                .create(&tenant, scopes, expires_at, signed, label)
                .map_err(|e| e.to_string())?;
            println!("id:      {}", record.id);
            println!("tenant:  {}", record.tenant);
            println!("key:     {key}    (shown once; only its hash is stored)");
            if let Some(secrets) = master {
                let secret = signing_secret(secrets.get(SECRETS[0].env).expose(), &record.id);
                println!("signing: {}    (shown once)", hex::encode(secret));
            }
        }
        ApiKeyCommand::List => {
            for key in store.list().map_err(|e| e.to_string())? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else if key.expires_at.is_some() {
                    "expiring"
                } else {
                    "active"
                };
                println!(
                    "{}  {:<24} {:<9} {:<8} {} {}",
                    key.id,
                    key.tenant,
                    state,
                    if key.signed { "signed" } else { "" },
                    key.scopes.join(","),
                    key.label
                );
            }
        }
        ApiKeyCommand::Revoke { id } => {
            if !store.revoke(&id).map_err(|e| e.to_string())? {
                return Err(format!("no API key with id `{id}`"));
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

// Per-record parsing and encoding allocate many small short-lived objects;
// mimalloc handles that pattern markedly better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::<Settings>::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return report(&e, ExitStatus::Misconfigured),
    };
    config.rebuild |= cli.rebuild;
    if let Some(Command::ApiKey(command)) = cli.command {
        return match api_key(&config, command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitStatus::Misconfigured.into()
            }
        };
    }
    init_tracing(config.log_format);
    let secrets = match load_secrets(SECRETS) {
        Ok(secrets) => secrets,
        Err(e) => return report(&e, ExitStatus::Misconfigured),
    };
    block_on_processor(run(config, secrets, shutdown_signal()))
}
